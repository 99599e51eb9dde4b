// Compile the contracts with the pinned solc from npm (standard JSON, imports
// resolved in node_modules) and write ABI + bytecode artifacts into the package.
//
//   node scripts/compile_contracts.js            write artifacts
//   node scripts/compile_contracts.js --stdout   print them as one JSON object (for the drift test)
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const srcDir = path.join(root, "jupyter_gpumarket", "chain", "contracts");
const outDir = path.join(root, "jupyter_gpumarket", "chain", "artifacts");
const CONTRACTS = ["GpuMarket", "TestDollar"];

const sources = {};
for (const f of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(srcDir, f), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "cancun",
    viaIR: true,
    optimizer: { enabled: true, runs: 400 }, // 400: under the 24 KiB code limit with room to grow; hot paths within ~1% of runs=1000 (bench/gas.py)
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

function findImport(importPath) {
  const candidate = path.join(root, "node_modules", importPath);
  if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, "utf8") };
  return { error: `not found in node_modules: ${importPath}` };
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length) process.exit(1);

const artifacts = {};
for (const name of CONTRACTS) {
  const c = output.contracts[`${name}.sol`][name];
  artifacts[name] = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
    deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  };
}

if (process.argv.includes("--stdout")) {
  // solcjs's own CLI truncates piped output; write the whole buffer ourselves.
  fs.writeFileSync(1, JSON.stringify(artifacts));
} else {
  fs.mkdirSync(outDir, { recursive: true });
  for (const [name, a] of Object.entries(artifacts)) {
    fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(a, null, 1) + "\n");
  }
  process.stderr.write(`wrote ${Object.keys(artifacts).join(", ")} to ${path.relative(root, outDir)}\n`);
}
