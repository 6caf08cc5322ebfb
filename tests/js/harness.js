// Starts a real `corral serve` for the JavaScript client tests, with a generated tiny
// GGUF registered as `tiny` in a temporary store, and stops it afterwards.
//
// Binaries: CORRAL_BIN (the corral binary), else $CORRAL_TARGET_DIR/corral, else the first
// of target/debug and target/release of the repository. Plugins: CORRAL_PLUGIN_DIR (a
// directory of plugin directories), else the llama.cpp plugin library found beside the
// binary, installed into a temporary plugin directory with its portable manifest (as
// tests/python/conftest.py does).

import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

function findBin() {
  const candidates = [];
  if (process.env.CORRAL_BIN) return process.env.CORRAL_BIN;
  if (process.env.CORRAL_TARGET_DIR) candidates.push(path.join(process.env.CORRAL_TARGET_DIR, "corral"));
  candidates.push(path.join(REPO, "target", "debug", "corral"), path.join(REPO, "target", "release", "corral"));
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) throw new Error("corral binary not found: set CORRAL_BIN or build with cargo first");
  return found;
}

function pluginDir(bin, tmp) {
  if (process.env.CORRAL_PLUGIN_DIR) return process.env.CORRAL_PLUGIN_DIR;
  const lib = path.join(path.dirname(bin), "libcorral_backend_llama_cpp.so");
  if (!fs.existsSync(lib)) throw new Error(`${lib} not found: build corral-backend-llama-cpp or set CORRAL_PLUGIN_DIR`);
  const dir = path.join(tmp, "plugins", "llama-cpp");
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(lib, path.join(dir, path.basename(lib)));
  fs.copyFileSync(path.join(REPO, "backends", "llama-cpp", "manifests", "llama-cpp-cpu.toml"), path.join(dir, "manifest.toml"));
  return path.join(tmp, "plugins");
}

/** A running server: `url`, `log()` (its stderr so far), `stop()`. */
export async function startServer() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "corral-js-"));
  const bin = findBin();
  const plugins = pluginDir(bin, tmp);
  const model = path.join(tmp, "tiny.gguf");
  execFileSync(bin, ["model", "generate", model, "--shape", "tiny", "--type", "f32"], { stdio: "pipe" });
  const env = {
    ...process.env,
    CORRAL_PLUGIN_PATH_ONLY: "1",
    XDG_CONFIG_HOME: "/nonexistent-corral-test",
    CORRAL_MODELS: path.join(tmp, "models"),
    CORRAL_LOG: "info",
    CORRAL_NUM_PARALLEL: "2",
  };
  delete env.CORRAL_HOST;
  const proc = spawn(bin, ["--plugin-dir", plugins, "serve", "--host", "127.0.0.1:0"], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // However the test process ends, the server ends with it.
  const killOnExit = () => proc.kill("SIGKILL");
  process.on("exit", killOnExit);
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`corral serve did not start:\n${log}`)), 60_000);
    proc.stderr.on("data", (chunk) => {
      log += chunk.toString();
      // Only a whole line: stderr arrives in chunks of any size, and a chunk that ends
      // inside the address ("listening on http://127") must not be taken for it.
      const m = log.match(/listening on (http:\/\/\S+)\r?\n/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.on("exit", (code) => reject(new Error(`corral serve exited with ${code}:\n${log}`)));
  });
  // Register the file under a name through the server, as a user would.
  const modelfile = path.join(tmp, "Modelfile");
  fs.writeFileSync(modelfile, `FROM ${model}\n`);
  execFileSync(bin, ["create", "tiny", "-f", modelfile], {
    env: { ...env, CORRAL_HOST: url.replace(/^http:\/\//, "") },
    stdio: "pipe",
  });
  return {
    url,
    model: "tiny",
    log: () => log,
    alive: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      process.off("exit", killOnExit);
      if (proc.exitCode === null) {
        const exited = new Promise((resolve) => proc.on("exit", resolve));
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(tmp, { recursive: true, force: true });
    },
  };
}
