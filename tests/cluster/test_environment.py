"""Environment sync: package sets from the notebook, venvs built by the provider, refusals the tenant sees.

Tiny wheels are built here into a local find-links directory, so the provider's
"package index" is a folder and nothing touches the network.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from distributed import Client

from jupyter_gpumarket.cluster.environment import EnvironmentBuilder, EnvironmentRefused, PackageSet, sanitise
from jupyter_gpumarket.cluster.leased import LeasedCluster
from jupyter_gpumarket.cluster.runtime import GpuProfile
from jupyter_gpumarket.errors import InvalidRequest
from jupyter_gpumarket.market.pricing import FixedFloor
from jupyter_gpumarket.market.provider import ProviderAgent

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
DISTRIBUTED = importlib.metadata.version("distributed")


def _project(root: Path, name: str, version: str, dependencies: list[str] = ()) -> Path:
    src = root / f"{name}-{version}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f'__version__ = "{version}"\n')
    deps = ", ".join(f'"{d}"' for d in dependencies)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [project]
        name = "{name}"
        version = "{version}"
        dependencies = [{deps}]
    """))
    return src


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """A find-links directory: gmtestpkg 1.2.3; gmneedsmore, which needs a package the index lacks;
    and gmbroken, whose metadata reads fine (it resolves) but whose module fails its CRC (it will not install)."""
    root = tmp_path_factory.mktemp("projects")
    out = tmp_path_factory.mktemp("wheels")
    projects = [_project(root, "gmtestpkg", "1.2.3"), _project(root, "gmneedsmore", "0.1", ["gmabsent>=1"]),
                _project(root, "gmbroken", "1.0")]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps", "--no-index",
                    "-w", str(out), *map(str, projects)], check=True)
    _corrupt(next(out.glob("gmbroken-*.whl")), b'__version__ = "1.0"')
    return out


def _corrupt(wheel: Path, text: bytes) -> None:
    """Store the wheel uncompressed, then change ``text`` in place: the zip's CRC no longer matches."""
    with zipfile.ZipFile(wheel) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(wheel, "w") as z:
        for info, data in members:
            info.compress_type = zipfile.ZIP_STORED
            z.writestr(info, data)
    raw = wheel.read_bytes()
    assert raw.count(text) == 1
    wheel.write_bytes(raw.replace(text, text.upper()))


@pytest.fixture
def builder(wheels, tmp_path) -> EnvironmentBuilder:
    return EnvironmentBuilder(tmp_path / "envs", find_links=(str(wheels),), no_index=True)


@pytest.fixture(scope="module")
def shared_envs(tmp_path_factory) -> Path:
    """One provider cache for the builder test and the devnet agent (which then reuses the venv)."""
    return tmp_path_factory.mktemp("shared-envs")


# -- PackageSet ------------------------------------------------------------------------------


def test_package_set_is_canonical_and_its_digest_follows_content():
    a = PackageSet.parse(["Requests>=2,<3", "gmtestpkg==1.2.3", "Foo_Bar[Extra]==1"], python="3.11")
    b = PackageSet.parse("gmtestpkg==1.2.3 foo-bar[extra]==1 requests<3,>=2", python="3.11")
    assert a.requirements == ("foo-bar[extra]==1", "gmtestpkg==1.2.3", "requests<3,>=2")
    assert a == b and a.digest == b.digest and len(a.digest) == 64
    assert PackageSet.parse(["gmtestpkg==1.2.4"], python="3.11").digest != PackageSet.parse(
        ["gmtestpkg==1.2.3"], python="3.11").digest
    assert PackageSet.parse(["gmtestpkg==1.2.3"], python="3.12").digest != PackageSet.parse(
        ["gmtestpkg==1.2.3"], python="3.11").digest
    assert PackageSet.from_dict(a.to_dict()) == a
    assert not PackageSet() and str(PackageSet()) == "(the provider's own environment)"


@pytest.mark.parametrize("bad, says", [
    (["pandas=2"], "not a PEP 508 requirement"),
    (["x @ https://example.org/x.whl"], "direct URLs are not accepted"),
    (["numpy==2.0", "NumPy==2.1"], "asked for twice"),
    (["__import__('os').system('true')"], "not a PEP 508 requirement"),
    (["a" * 300], "longer than"),
])
def test_package_set_refuses_what_is_not_a_plain_requirement(bad, says):
    with pytest.raises(InvalidRequest, match=says):
        PackageSet.parse(bad)


def test_package_set_from_lock_file(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("# pinned by pip-compile\ngmtestpkg==1.2.3 \\\n    --hash=sha256:abc\n\nrequests==2.32.3  # via x\n")
    assert PackageSet.from_requirements_file(lock).requirements == ("gmtestpkg==1.2.3", "requests==2.32.3")
    lock.write_text("--index-url https://example.org/simple\nrequests==2.32.3\n")
    with pytest.raises(InvalidRequest, match="requirements.txt:1: pip option '--index-url' is not accepted"):
        PackageSet.from_requirements_file(lock)


def test_package_set_from_the_kernel_names_distributions_not_modules():
    import json

    import packaging.version
    import yaml  # module "yaml", distribution "PyYAML"

    ns = {"yaml": yaml, "json": json, "Version": packaging.version.Version, "x": 3, "_hidden": pytest}
    found = PackageSet.from_namespace(ns, extra=["gmtestpkg==1.2.3"])
    assert found.requirements == (
        "gmtestpkg==1.2.3",
        f"packaging=={importlib.metadata.version('packaging')}",
        f"pyyaml=={importlib.metadata.version('PyYAML')}",
    )  # json is stdlib, _hidden is private, ints have no package
    assert PackageSet.from_modules(["IPython", "jupyter_gpumarket.session", "os.path"]).requirements == ()


def test_sanitise_bounds_and_flattens_foreign_text():
    assert sanitise("bad\x1b[31m\nthing file:///home/p/wheels/x.whl") == "bad [31m thing <local file>"
    assert len(sanitise("x" * 5000)) == 400


# -- EnvironmentBuilder ------------------------------------------------------------------------


def test_builder_builds_one_cached_venv_per_set_with_only_what_differs(wheels, shared_envs):
    builder = EnvironmentBuilder(shared_envs, find_links=(str(wheels),), no_index=True)
    # Only what the provider's base lacks is installed: its own distributed and packaging satisfy those pins.
    assert builder.check(PackageSet.parse(["gmtestpkg==1.2.3", f"distributed=={DISTRIBUTED}", "packaging"])) == \
        ["gmtestpkg==1.2.3"]
    packages = PackageSet.parse(["gmtestpkg==1.2.3"])  # the set the devnet test below leases with
    env = builder.prepare(packages)
    assert not env.is_base and not env.reused and env.installed == ("gmtestpkg==1.2.3",)
    probe = ("import gmtestpkg, distributed, importlib.metadata as m; "
             "print(gmtestpkg.__version__, distributed.__version__, m.version('gmtestpkg'))")
    out = subprocess.run([env.python, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1.2.3", DISTRIBUTED, "1.2.3"]  # the extra package, on top of the provider's own Dask
    manifest = Path(env.python).parents[1] / "gpumarket-environment.json"
    built_at = manifest.stat().st_mtime_ns
    again = builder.prepare(PackageSet.parse(["GMTestPkg == 1.2.3"]))
    assert again.reused and again.python == env.python and manifest.stat().st_mtime_ns == built_at
    assert builder.check(packages) == ["gmtestpkg==1.2.3"]  # answered from the cache
    assert len([p for p in Path(builder.cache_dir).iterdir()]) == 1  # no scratch directory left behind
    assert builder.prepare(PackageSet.parse(["packaging"])).is_base  # the base satisfies it: no venv


@pytest.mark.parametrize("wanted, package, says", [
    (["gmtestpkg==9.9"], "gmtestpkg", "not available from this provider's package index (the index has: 1.2.3)"),
    (["distributed==2020.1.0"], "distributed", f"workers run distributed {DISTRIBUTED}"),
    (["gmneedsmore==0.1"], "gmabsent", "not available from this provider's package index"),  # a dependency
])
def test_builder_refuses_with_a_reason_naming_the_package(builder, wanted, package, says):
    with pytest.raises(EnvironmentRefused) as refused:
        builder.prepare(PackageSet.parse(wanted))
    assert refused.value.package == package and says in refused.value.reason
    assert not Path(builder.cache_dir).exists() or not any(Path(builder.cache_dir).iterdir())


def test_builder_refuses_another_python_too_big_sets_and_installs_without_an_index(builder, tmp_path):
    with pytest.raises(EnvironmentRefused, match="python==3.9: this provider's workers run Python"):
        builder.check(PackageSet.parse(["packaging"], python="3.9"))
    small = EnvironmentBuilder(tmp_path / "small", find_links=builder.find_links, no_index=True, max_packages=1)
    with pytest.raises(EnvironmentRefused, match="2 packages would have to be installed; this provider builds at most 1"):
        small.check(PackageSet.parse(["gmtestpkg==1.2.3", "gmneedsmore==0.1"]))
    closed = EnvironmentBuilder(tmp_path / "closed", enabled=False)
    with pytest.raises(EnvironmentRefused, match="gmtestpkg==1.2.3: not in this provider's environment, and it "
                                                 "installs no packages"):
        closed.prepare(PackageSet.parse(["gmtestpkg==1.2.3"]))


def test_provider_builder_comes_from_dask_config(tmp_path):
    import dask.config

    with dask.config.set({"gpumarket.provider-find-links": "/srv/wheels /srv/more", "gpumarket.provider-no-index": True}):
        configured = EnvironmentBuilder.from_config(tmp_path)
    assert configured.enabled and configured.no_index and configured.index_url is None
    assert configured.find_links == ("/srv/wheels", "/srv/more")
    assert not EnvironmentBuilder.from_config(tmp_path).enabled  # no index configured: only the base is served


# -- on the devnet ---------------------------------------------------------------------------


@pytest.fixture
def agent(chain, wheels, shared_envs):
    """provider0 serving one simulated H100 with the local wheel directory as its package index."""
    # An earlier test's evm_revert leaves the chain's clock behind the wall clock, which bidding
    # windows are also checked against: bring it level first.
    chain.mine(max(int(time.time()), chain.w3.eth.get_block("latest")["timestamp"] + 1))
    builder = EnvironmentBuilder(shared_envs, find_links=(str(wheels),), no_index=True)
    agent = ProviderAgent(chain.client("provider0"), GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0), FixedFloor(2_900_000),
                          gpus=1, environments=builder).start()
    yield agent
    agent.stop()


def test_leased_workers_run_the_notebook_package_set(chain, agent):
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("gmtestpkg")  # not in the tenant's nor the provider's base
    tenant = chain.client("tenant")
    cluster = LeasedCluster(gpus=1, gpu="H100", max_price="3.00", hours=1, budget="5", market=tenant, window=3,
                            packages=["gmtestpkg==1.2.3"])
    try:
        with Client(cluster) as client:
            versions = client.get_versions(check=True)  # raises if Dask's handshake finds a mismatch
            assert {v["packages"]["distributed"] for v in versions["workers"].values()} == {DISTRIBUTED}

            def probe():
                import gmtestpkg

                return gmtestpkg.__version__, importlib.metadata.version("gmtestpkg")

            assert client.submit(probe, resources={"GPU": 1}).result() == ("1.2.3", "1.2.3")
            assert client.submit(sum, range(10)).result() == 45
    finally:
        cluster.close()
    [receipt] = cluster.receipts
    assert receipt.provider_id == agent.provider_id and receipt.cost + receipt.refunded == \
        tenant.lease(receipt.lease_id).deposit


def test_an_unbuildable_set_shows_the_provider_reason_and_moves_no_money(chain, agent):
    tenant = chain.client("tenant")
    before = tenant.balance(), tenant.balance(tenant.market.address)
    leases_before = len(tenant.get_logs("LeaseCreated"))
    with pytest.raises(EnvironmentRefused) as refused:
        LeasedCluster(gpus=1, gpu="H100", max_price="3.00", hours=1, budget="5", market=tenant, window=3,
                      packages=["gmtestpkg==9.9"])
    message = str(refused.value)
    assert message.startswith(f"provider {agent.provider_id} cannot run this package set: gmtestpkg==9.9: "
                              "not available from this provider's package index (the index has: 1.2.3)")
    assert "the order was closed and its deposit refunded" in message
    assert (tenant.balance(), tenant.balance(tenant.market.address)) == before  # to the base unit
    assert len(tenant.get_logs("LeaseCreated")) == leases_before
    [order] = tenant.get_logs("OrderClosed")[-1:]
    assert order["refunded"] > 0


def test_a_provider_that_fails_to_build_after_the_lease_started_has_it_rejected_with_a_full_refund(chain, agent):
    tenant = chain.client("tenant")
    before = tenant.balance(), tenant.balance(tenant.market.address)
    with pytest.raises(EnvironmentRefused) as refused:  # gmbroken passes the check, then fails to install
        LeasedCluster(gpus=1, gpu="H100", max_price="3.00", hours=1, budget="5", market=tenant, window=3,
                      packages=["gmbroken==1.0"])
    assert str(refused.value).startswith(f"provider {agent.provider_id} cannot run this package set: gmbroken==1.0: "
                                         "could not be installed: ")
    assert "Bad CRC-32" in refused.value.reason and "(the new lease was rejected with a full refund)" in str(refused.value)
    [rejected] = tenant.get_logs("LeaseRejected")
    assert rejected["refunded"] == tenant.lease(rejected["leaseId"]).deposit
    assert (tenant.balance(), tenant.balance(tenant.market.address)) == before  # to the base unit
    with pytest.raises(EnvironmentRefused, match="could not be installed"):  # the next tenant is refused up front
        agent.environments.check(PackageSet.parse(["gmbroken==1.0"]))
