"""Environment sync: the notebook's packages travel with the order; the provider builds them or refuses.

Tenant side, :class:`PackageSet` is what a cell needs on the workers: PEP 508
requirements (validated with ``packaging``, never evaluated as code) in a
canonical sorted form with a digest, plus the kernel's Python ``major.minor``.
It comes from explicit requirements, a lock file (``name==version`` lines, as
``pip freeze`` or ``pip-compile`` write them), or the kernel itself: the
distributions behind the modules a notebook namespace uses
(:meth:`PackageSet.from_namespace`, through
``importlib.metadata.packages_distributions``)::

    >>> ps = PackageSet.parse(["Requests>=2", "gmtestpkg==1.2.3"], python="3.11")
    >>> ps.requirements
    ('gmtestpkg==1.2.3', 'requests>=2')
    >>> ps == PackageSet.parse(["gmtestpkg==1.2.3", "requests >= 2"], python="3.11")
    True
    >>> PackageSet.parse(["x @ https://example.org/x.whl"])
    Traceback (most recent call last):
    ...
    jupyter_gpumarket.errors.InvalidRequest: package 'x @ https://example.org/x.whl': direct URLs are not accepted; name a version from the package index

Provider side, :class:`EnvironmentBuilder` turns a set into an interpreter for
the lease's workers. What the provider's own environment (its *base*) already
satisfies needs nothing; only the difference is installed, with ``pip`` from
the provider's configured index (``--index-url`` and/or ``--find-links``; on
the devnet a local wheel directory and ``--no-index``, so nothing touches the
network). Each set gets one cached venv under the provider's state directory,
keyed by the set's digest and the base's runtime versions, built in a scratch
directory and renamed into place so a half-built venv is never used.

The venv is *layered*: made with ``python -m venv --without-pip`` from the
provider's interpreter, plus a ``.pth`` file that adds the provider's
site-packages *after* the venv's own. Packages pip installs into the venv win;
everything else (Dask, distributed, this package) is the provider's, so the
versions Dask's handshake compares (``client.get_versions(check=True)``) are
the provider's own. (``--system-site-packages`` would expose the *base
interpreter's* site-packages, not the provider's virtualenv, so it is not used.)

A set is refused, before anything is built, with :class:`EnvironmentRefused`
(typed ``package``, ``wanted``, ``reason``) when a requirement names a version
of a Dask runtime package (``distributed.versions`` lists them, Python
included) other than the provider's, when the Python ``major.minor`` differs,
when pip cannot resolve it from the provider's index (``pip install --dry-run
--report``), when a dependency would replace a runtime package, or when more
than ``max_packages`` would be installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import InvalidRequest

__all__ = ["PackageSet", "EnvironmentBuilder", "Environment", "EnvironmentRefused", "RUNTIME_PACKAGES"]

#: Packages whose versions Dask's handshake compares between client, scheduler and workers.
RUNTIME_PACKAGES = ("dask", "distributed", "msgpack", "cloudpickle", "tornado", "toolz", "numpy", "pandas", "lz4")

#: The notebook machinery and this package: a kernel imports them, workers never need them.
KERNEL_DISTRIBUTIONS = frozenset(canonicalize_name(n) for n in (
    "ipykernel", "ipython", "jupyter-client", "jupyter-core", "traitlets", "pyzmq", "comm", "debugpy",
    "ipywidgets", "widgetsnbextension", "jupyterlab-widgets", "matplotlib-inline", "prompt-toolkit", "pexpect",
    "ptyprocess", "jedi", "parso", "pygments", "decorator", "executing", "asttokens", "pure-eval", "stack-data",
    "wcwidth", "nest-asyncio", "psutil", "jupyter-gpumarket", "pytest", "pluggy", "iniconfig", "_pytest",
))

MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_CHARS = 200
MAX_REASON_CHARS = 400


class EnvironmentRefused(InvalidRequest):
    """A provider cannot run workers with this package set; ``reason`` says why.

    ``package`` is the distribution at fault ('' when the set as a whole is refused)
    and ``wanted`` what the set asks of it.
    """

    def __init__(self, package: str, wanted: str, reason: str, provider_id: int | None = None) -> None:
        self.package = package
        self.wanted = wanted
        self.reason = sanitise(reason)
        self.provider_id = provider_id
        who = f"provider {provider_id}" if provider_id else "the provider"
        what = f"{package}{wanted}: " if package else ""
        super().__init__(f"{who} cannot run this package set: {what}{self.reason}")

    def to_dict(self) -> dict:
        return {"package": self.package, "wanted": self.wanted, "reason": self.reason}


def sanitise(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Printable, one line, bounded: text from another party is shown, never trusted."""
    text = re.sub(r"file://\S+", "<local file>", str(text))
    text = re.sub(r"(?<![\w.])(?:/[\w.+-]+){2,}/?", "<path>", text)  # the provider's file layout is its own
    text = re.sub(r"[^\x20-\x7e]+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _canonical(text: str) -> tuple[str, str]:
    """``(canonical name, canonical requirement string)`` of one requirement, or InvalidRequest."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"package requirement {text!r} is empty or not a string")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise InvalidRequest(f"package requirement {text[:40]!r}... is longer than {MAX_REQUIREMENT_CHARS} characters")
    try:
        req = Requirement(text.strip())
    except InvalidRequirement as exc:
        raise InvalidRequest(f"package {text!r} is not a PEP 508 requirement ({exc}); write e.g. 'pandas==2.2.3'") \
            from None
    if req.url:
        raise InvalidRequest(f"package {text!r}: direct URLs are not accepted; name a version from the package index")
    name = canonicalize_name(req.name)
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in req.extras))}]" if req.extras else ""
    spec = ",".join(sorted(str(s) for s in req.specifier))
    marker = f"; {req.marker}" if req.marker else ""
    return name, f"{name}{extras}{spec}{marker}"


@dataclass(frozen=True)
class PackageSet:
    """Requirements for a lease's workers, canonical and sorted, with the kernel's Python ``major.minor``."""

    requirements: tuple[str, ...] = ()
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"

    @classmethod
    def parse(cls, items: Iterable[str], python: str | None = None) -> "PackageSet":
        """Validate and canonicalise requirement strings; a name listed twice with different specs is refused."""
        if isinstance(items, str):
            items = items.split()  # like pip's command line: whitespace between requirements
        by_name: dict[str, str] = {}
        for text in items:
            name, canonical = _canonical(text)
            if by_name.get(name, canonical) != canonical:
                raise InvalidRequest(f"package {name} is asked for twice ({by_name[name]} and {canonical}); keep one")
            by_name[name] = canonical
        if len(by_name) > MAX_REQUIREMENTS:
            raise InvalidRequest(f"{len(by_name)} packages asked for; at most {MAX_REQUIREMENTS} can travel with an order")
        py = python or cls.python
        if not re.fullmatch(r"\d+\.\d+", py):
            raise InvalidRequest(f"python version {py!r} must be major.minor, e.g. '3.11'")
        return cls(tuple(sorted(by_name.values())), py)

    @classmethod
    def from_requirements_file(cls, path: str | os.PathLike) -> "PackageSet":
        """A lock file: one requirement per line; comments, blank lines and ``--hash`` options are skipped.

        Other pip options (``-r``, ``-e``, ``--index-url``) are refused: the provider picks its index.
        """
        lines = []
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidRequest(f"cannot read requirements file {path}: {exc.strerror}") from None
        for number, raw in enumerate(text.replace("\\\n", " ").splitlines(), 1):
            line = re.sub(r"(^|\s)#.*$", "", raw)
            line = re.sub(r"\s--hash[= ]\S+", "", line).strip()
            if not line:
                continue
            if line.startswith("-"):
                raise InvalidRequest(f"{path}:{number}: pip option {line.split()[0]!r} is not accepted; "
                                     "list pinned packages only (the provider chooses its package index)")
            lines.append(line)
        return cls.parse(lines)

    @classmethod
    def from_modules(cls, modules: Iterable[str], extra: Iterable[str] = ()) -> "PackageSet":
        """``name==version`` of the distributions behind top-level ``modules`` (stdlib, local
        modules and the notebook machinery skipped), plus ``extra`` requirements."""
        owners = importlib.metadata.packages_distributions()
        pins: dict[str, str] = {}
        for module in modules:
            top = module.split(".", 1)[0]
            if top in sys.stdlib_module_names or top.startswith("_"):
                continue
            for dist in owners.get(top, ()):
                name = canonicalize_name(dist)
                if name in KERNEL_DISTRIBUTIONS:
                    continue
                try:
                    pins[name] = f"{name}=={importlib.metadata.version(dist)}"
                except importlib.metadata.PackageNotFoundError:
                    continue
        return cls.parse([*pins.values(), *extra])

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, object], extra: Iterable[str] = ()) -> "PackageSet":
        """What a notebook's namespace uses: imported modules and the modules of its functions and classes."""
        modules = set()
        for name, value in namespace.items():
            if name.startswith("_"):
                continue
            if isinstance(value, types.ModuleType):
                modules.add(value.__name__)
            else:
                module = getattr(value, "__module__", None) if isinstance(value, (type, types.FunctionType)) else \
                    getattr(type(value), "__module__", None)
                if isinstance(module, str) and module not in ("__main__", "builtins"):
                    modules.add(module)
        return cls.from_modules(sorted(modules), extra)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __or__(self, other: "PackageSet") -> "PackageSet":
        return PackageSet.parse([*self.requirements, *other.requirements], python=self.python)

    @property
    def digest(self) -> str:
        """sha256 of the canonical form: equal sets, equal digests (the provider's cache key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"python": self.python, "requirements": list(self.requirements)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PackageSet":
        """From the wire: everything is validated again."""
        if not isinstance(data, Mapping) or not isinstance(data.get("requirements", []), list):
            raise InvalidRequest("packages must be an object with a list of requirements")
        return cls.parse(data.get("requirements", []), python=str(data.get("python") or cls.python))

    def __str__(self) -> str:
        return ", ".join(self.requirements) or "(the provider's own environment)"


@dataclass(frozen=True)
class Environment:
    """Where a lease's workers run: ``python=None`` is the provider's own interpreter (nothing to install)."""

    digest: str
    python: str | None = None
    installed: tuple[str, ...] = ()  # name==version pip added on top of the base
    reused: bool = False  # found in the cache

    @property
    def is_base(self) -> bool:
        return self.python is None


@dataclass
class EnvironmentBuilder:
    """Builds (or refuses) the provider-side environment of a :class:`PackageSet`; one cached venv per set.

    ``index_url`` / ``find_links`` / ``no_index`` are handed to pip as given; ``enabled=False``
    (a provider with no index configured) serves only sets its base already satisfies.

    >>> builder = EnvironmentBuilder("/tmp/envs", enabled=False)
    >>> builder.prepare(PackageSet.parse(["packaging"])).is_base
    True
    """

    cache_dir: str | os.PathLike
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    enabled: bool = True
    max_packages: int = 64
    timeout: float = 600.0
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Answers to check(), by cache key: the control endpoint is open to anyone, so one pip run per set.
    _answers: dict[str, list[str] | EnvironmentRefused] = field(default_factory=dict, repr=False)
    _resolving: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.find_links = tuple(str(f) for f in self.find_links)

    @classmethod
    def from_config(cls, cache_dir: str | os.PathLike | None = None) -> "EnvironmentBuilder":
        """The provider's builder from dask config (``DASK_GPUMARKET__PROVIDER_FIND_LINKS`` and so on).

        ``gpumarket.provider-index-url`` and ``gpumarket.provider-find-links`` (a path or URL, or a
        list) name the index; ``gpumarket.provider-no-index: true`` uses only the find-links. With
        neither, building is off. Venvs are cached under ``$GPUMARKET_HOME/provider-envs``.
        """
        import dask.config

        from ..chain.devnet import default_state_dir

        index_url = dask.config.get("gpumarket.provider-index-url", None) or None
        links = dask.config.get("gpumarket.provider-find-links", None) or ()
        links = tuple(links.split()) if isinstance(links, str) else tuple(links)
        return cls(cache_dir or default_state_dir() / "provider-envs", index_url=index_url, find_links=links,
                   no_index=bool(dask.config.get("gpumarket.provider-no-index", False)),
                   enabled=bool(index_url or links))

    # -- what the base has -------------------------------------------------------------

    @staticmethod
    def installed_version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    @classmethod
    def runtime_versions(cls) -> dict[str, str | None]:
        """The provider's Python ``major.minor`` and Dask runtime package versions."""
        base = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        return base | {name: cls.installed_version(name) for name in RUNTIME_PACKAGES}

    # -- deciding ------------------------------------------------------------------------

    def missing(self, packages: PackageSet) -> list[str]:
        """Requirements the base does not satisfy; refuses runtime conflicts and a wrong Python."""
        runtime = self.runtime_versions()
        if packages.python != runtime["python"]:
            raise EnvironmentRefused("python", f"=={packages.python}", f"this provider's workers run Python "
                                     f"{runtime['python']}; Dask needs the same Python on both sides")
        missing = []
        for text in packages.requirements:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate():
                continue
            name = canonicalize_name(req.name)
            have = self.installed_version(name)
            satisfied = have is not None and _contains(req, have)
            if name in RUNTIME_PACKAGES and not satisfied:  # the scheduler runs the base: workers cannot differ
                runs = f"{name} {have}" if have else f"no {name}"
                raise EnvironmentRefused(name, str(req.specifier), f"this provider's workers run {runs}; "
                                         "Dask's version check needs the same version on client, scheduler and workers")
            if not satisfied:
                missing.append(text)
        if len(missing) > self.max_packages:
            raise EnvironmentRefused("", "", f"{len(missing)} packages would have to be installed; this provider "
                                     f"builds at most {self.max_packages}")
        if missing and not self.enabled:
            first = Requirement(missing[0])
            raise EnvironmentRefused(canonicalize_name(first.name), str(first.specifier),
                                     "not in this provider's environment, and it installs no packages "
                                     "(no package index configured)")
        return missing

    def resolve(self, requirements: list[str]) -> list[str]:
        """``name==version`` pip would add for ``requirements`` (a dry run), or EnvironmentRefused."""
        if not requirements:
            return []
        report = self._pip(sys.executable, ["install", "--dry-run", "--quiet", "--report", "-", *requirements])
        installs = [(canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"])
                    for i in json.loads(report or "{}").get("install", [])]
        runtime = self.runtime_versions()
        for name, version in installs:
            if name in RUNTIME_PACKAGES or name == "python":
                raise EnvironmentRefused(name, f"=={version}", f"the set needs {name} {version} but this provider's "
                                         f"workers run {runtime.get(name) or 'none'}; Dask's version check needs "
                                         "the same version everywhere")
        if len(installs) > self.max_packages:
            raise EnvironmentRefused("", "", f"{len(installs)} packages would have to be installed; this provider "
                                     f"builds at most {self.max_packages}")
        return [f"{name}=={version}" for name, version in installs]

    def check(self, packages: PackageSet) -> list[str]:
        """Whether this provider can run ``packages``: what it would install, or EnvironmentRefused.

        Answers are remembered per set (at most 256) and pip resolves one set at a time.
        """
        missing = self.missing(packages)
        if not missing:
            return []
        key = self.cache_key(packages)
        built = _read_manifest(Path(self.cache_dir) / key)
        if built:
            return list(built["installed"])
        with self._resolving:
            if key not in self._answers:
                try:
                    self._answers[key] = self.resolve(missing)
                except EnvironmentRefused as exc:
                    self._answers[key] = exc
                while len(self._answers) > 256:
                    self._answers.pop(next(iter(self._answers)))
            answer = self._answers[key]
        if isinstance(answer, EnvironmentRefused):
            raise EnvironmentRefused(answer.package, answer.wanted, answer.reason)
        return list(answer)

    # -- building ------------------------------------------------------------------------

    def prepare(self, packages: PackageSet) -> Environment:
        """The environment for ``packages``: the base, a cached venv, or a new one (built once per set)."""
        missing = self.missing(packages)
        if not missing:
            return Environment(packages.digest)
        key = self.cache_key(packages)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            target = Path(self.cache_dir) / key
            recorded = _read_manifest(target)
            if recorded is not None:
                return Environment(packages.digest, str(_venv_python(target)), tuple(recorded["installed"]), True)
            installs = self.resolve(missing)
            try:
                python = self._build(target, packages, installs)
            except EnvironmentRefused as exc:
                self._answers[key] = exc  # later checks refuse at once instead of leasing to fail again
                raise
            return Environment(packages.digest, str(python), tuple(installs))

    def cache_key(self, packages: PackageSet) -> str:
        base = json.dumps(self.runtime_versions(), sort_keys=True).encode()
        return f"{packages.digest[:24]}-{hashlib.sha256(base).hexdigest()[:8]}"

    def _build(self, target: Path, packages: PackageSet, installs: list[str]) -> Path:
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=self.cache_dir))
        try:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True,
                           capture_output=True, timeout=120)
            python = _venv_python(scratch)
            purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True, timeout=60).stdout.strip()
            # The provider's site-packages after the venv's own: installed packages win, the rest is the base.
            layers = "".join(f"import site; site.addsitedir({p!r})\n" for p in _base_site_dirs())
            Path(purelib, "_gpumarket_base.pth").write_text(layers)
            try:
                self._pip(str(python), ["install", "--quiet", "--no-deps", *installs])
            except EnvironmentRefused as exc:  # resolved, yet would not install (a broken wheel, a failing build)
                name, _, version = next((i for i in installs if i.split("==")[0] in exc.reason), "==").partition("==")
                raise EnvironmentRefused(name, f"=={version}" if name else "", f"could not be installed: {exc.reason}") \
                    from None
            _write_manifest(scratch, packages, installs)
            try:
                os.rename(scratch, target)
            except OSError:  # another process built the same set first: use theirs
                shutil.rmtree(scratch, ignore_errors=True)
            return _venv_python(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def _pip(self, python: str, args: list[str]) -> str:
        index = [*(["--index-url", self.index_url] if self.index_url else []),
                 *(a for link in self.find_links for a in ("--find-links", link)),
                 *(["--no-index"] if self.no_index else [])]
        command = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args[:1], *index, *args[1:]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout,
                                  env={**os.environ, "PIP_NO_INPUT": "1"})
        except subprocess.TimeoutExpired:
            raise EnvironmentRefused("", "", f"building the set took longer than {self.timeout:.0f} s") from None
        if done.returncode != 0:
            raise _refusal_from_pip(done.stderr)
        return done.stdout


def _contains(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _refusal_from_pip(stderr: str) -> EnvironmentRefused:
    """Name the package pip could not find or build; keep pip's own words, bounded."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:") and line != "ERROR: Exception:"]
    found = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)(\S*)", stderr)
    if found:
        seen = re.search(r"\(from versions: ([^)]*)\)", stderr)
        versions = f" (the index has: {seen.group(1)})" if seen else ""
        return EnvironmentRefused(canonicalize_name(found.group(1)), found.group(2),
                                  f"not available from this provider's package index{versions}")
    conflict = re.search(r"Cannot install (.+?) because", stderr)
    reason = "; ".join(errors[-2:]) or (lines[-1] if lines else "pip failed")  # a traceback ends with its error
    return EnvironmentRefused("", "", f"conflicting requirements ({conflict.group(1)}): {reason}" if conflict
                              else reason)


def _venv_python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _base_site_dirs() -> list[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(paths)


def _write_manifest(root: Path, packages: PackageSet, installs: list[str]) -> None:
    (root / "gpumarket-environment.json").write_text(json.dumps({**packages.to_dict(), "installed": installs}))


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "gpumarket-environment.json").read_text())
    except (OSError, ValueError):
        return None
