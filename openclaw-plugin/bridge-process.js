// Owns one `synthesis-bridge serve` child process for the plugin's service: finds the binary,
// builds its flags from the plugin config, starts it on a free loopback port, reads its
// `listening http=… ws=…` line, restarts it with back-off when it dies, and stops it with
// SIGTERM (the bridge's own graceful shutdown), then SIGKILL after a grace period.
//
// The bridge is started with `--parent-pid <gateway pid>`: it arms PR_SET_PDEATHSIG, so it
// also stops when the gateway is killed outright (SIGKILL) and `stop()` never runs.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

/** The plugin config key a user sets to name the binary (used in error messages). */
export const BINARY_SETTING = "plugins.entries.synthesis-bridge.config.binary";

const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A bridge that ran this long before dying counts as healthy: back-off starts over. */
const HEALTHY_RUN_MS = 60_000;
/** How long the first start may take to print `listening` before it counts as failed. */
const START_TIMEOUT_MS = 20_000;
/** After SIGTERM: the bridge's shutdown_grace (10 s by default) plus a margin, then SIGKILL. */
const STOP_TIMEOUT_MS = 15_000;
const STDERR_TAIL_LINES = 20;

/** The binary: the `binary` setting, else `synthesis-bridge` on PATH, else an error naming both. */
export function findBinary(configured, env = process.env) {
  if (configured) {
    const resolved = path.resolve(configured);
    if (isExecutable(resolved)) return resolved;
    throw new Error(
      `synthesis-bridge: ${BINARY_SETTING} is ${JSON.stringify(configured)}, which is not an executable file; ` +
        `fix it with: openclaw config set ${BINARY_SETTING} /path/to/synthesis-bridge`,
    );
  }
  for (const dir of (env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, "synthesis-bridge");
    if (isExecutable(candidate)) return candidate;
  }
  throw new Error(
    "synthesis-bridge: binary not found on PATH; install it (cargo install --path <checkout>) " +
      `or set it with: openclaw config set ${BINARY_SETTING} /path/to/synthesis-bridge`,
  );
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Plugin config key → `serve` flag, for the settings passed through as they are. */
const PASSTHROUGH = [
  ["workspace", "--workspace"],
  ["claudeBin", "--claude-bin"],
  ["permissionMode", "--permission-mode"],
  ["allowBypassPermissions", "--allow-bypass-permissions"],
  ["workspaceMode", "--workspace-mode"],
  ["maxProcesses", "--max-processes"],
  ["idleKill", "--idle-kill"],
  ["turnTimeout", "--turn-timeout"],
  ["heartbeatInterval", "--heartbeat-interval"],
  ["systemPrompt", "--system-prompt"],
  ["stripOpenclawContext", "--strip-openclaw-context"],
  ["settingSources", "--setting-sources"],
];

/** The `serve` arguments for this config (everything but the port). */
export function serveArgs(config, { stateDir, apiKeyFile, parentPid }) {
  const args = [
    "serve",
    "--host",
    "127.0.0.1",
    "--state-dir",
    stateDir,
    "--api-key-file",
    apiKeyFile,
    "--parent-pid",
    String(parentPid),
  ];
  if (config.demo) args.push("--demo=true");
  for (const [key, flag] of PASSTHROUGH) {
    const value = config[key];
    if (value === undefined || value === null || value === "") continue;
    // `--name=value`: a bare boolean flag would not take a separate value.
    args.push(`${flag}=${value}`);
  }
  for (const extra of config.extraArgs ?? []) args.push(String(extra));
  return args;
}

/** Writes a fresh random API key to `<stateDir>/plugin-api-key` (0600) and returns it. */
export function writeApiKey(stateDir) {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  const key = `sk-synthesis-${randomBytes(24).toString("hex")}`;
  const file = path.join(stateDir, "plugin-api-key");
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return { key, file };
}

export class BridgeProcess {
  /**
   * @param {{binary: string, args: string[], port: number, logger: object, env?: object}} options
   */
  constructor({ binary, args, port, logger, env = process.env }) {
    this.binary = binary;
    this.args = args;
    this.port = port;
    this.configuredPort = port;
    this.logger = logger;
    this.env = env;
    this.child = null;
    this.stopping = false;
    this.backoffMs = FIRST_BACKOFF_MS;
    this.restartTimer = null;
    this.endpoint = null;
    this.waiters = [];
    this.stderrTail = [];
    this.exited = null;
  }

  /** Starts the bridge; resolves with `{baseUrl, pid}` once it prints `listening`. */
  start() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        reject(new Error(`synthesis-bridge did not print \`listening\` within ${START_TIMEOUT_MS} ms${this.tail()}`));
        this.stop();
      }, START_TIMEOUT_MS);
      this.spawnOnce((result) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (result instanceof Error) reject(result);
        else resolve(result);
      });
    });
  }

  /** The endpoint of the running bridge, waiting (up to `timeoutMs`) through a restart. */
  ready(timeoutMs = START_TIMEOUT_MS) {
    if (this.endpoint) return Promise.resolve(this.endpoint);
    if (this.stopping) return Promise.reject(new Error("synthesis-bridge is stopped"));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`synthesis-bridge is not running (waited ${timeoutMs} ms)${this.tail()}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  spawnOnce(onFirst) {
    const args = [...this.args, `--port=${this.port}`];
    const startedAt = Date.now();
    let child;
    try {
      child = spawn(this.binary, args, {
        env: this.env,
        stdio: ["ignore", "pipe", "pipe"],
        // A session of its own: a Ctrl-C meant for a gateway run in a terminal reaches the
        // gateway, which stops the bridge through stop(), not the bridge behind its back.
        detached: true,
      });
    } catch (error) {
      onFirst?.(new Error(`synthesis-bridge: cannot run ${this.binary}: ${error.message}`));
      return;
    }
    this.child = child;
    this.exited = new Promise((resolve) => child.once("close", resolve));
    let stdout = "";
    let listened = false;
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = /^listening http=(\S+) ws=(\S+)$/m.exec(stdout);
      if (!match || this.endpoint) return;
      listened = true;
      const http = match[1];
      // Keep the port across restarts, so the provider's baseUrl stays valid.
      this.port = Number(http.slice(http.lastIndexOf(":") + 1));
      this.endpoint = { baseUrl: `http://${http}/v1`, pid: child.pid };
      this.logger.info?.(`synthesis-bridge: listening on http://${http} (pid ${child.pid})`);
      for (const waiter of this.waiters.splice(0)) {
        clearTimeout(waiter.timer);
        waiter.resolve(this.endpoint);
      }
      onFirst?.(this.endpoint);
      onFirst = null;
    });
    let partial = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        this.stderrTail.push(line);
        if (this.stderrTail.length > STDERR_TAIL_LINES) this.stderrTail.shift();
        if (/ (WARN|ERROR) /.test(line)) this.logger.warn?.(`synthesis-bridge: ${line}`);
        else this.logger.debug?.(`synthesis-bridge: ${line}`);
      }
    });
    child.once("error", (error) => {
      this.logger.error?.(`synthesis-bridge: cannot run ${this.binary}: ${error.message}`);
    });
    child.once("close", (code, signal) => {
      this.child = null;
      this.endpoint = null;
      if (onFirst) {
        onFirst(
          new Error(`synthesis-bridge exited before listening (${signal ?? `status ${code}`})${this.tail()}`),
        );
        onFirst = null;
        return;
      }
      if (this.stopping) return;
      if (!listened && this.port !== this.configuredPort) {
        // The kept port may have been taken meanwhile: the next try takes the configured one
        // (any free port by default; prepareRuntimeAuth hands OpenClaw the new URL).
        this.port = this.configuredPort;
      }
      if (Date.now() - startedAt >= HEALTHY_RUN_MS) this.backoffMs = FIRST_BACKOFF_MS;
      const delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
      this.logger.warn?.(
        `synthesis-bridge exited (${signal ?? `status ${code}`}); restarting in ${delay} ms${this.tail()}`,
      );
      this.restartTimer = setTimeout(() => {
        this.restartTimer = null;
        if (!this.stopping) this.spawnOnce(null);
      }, delay);
    });
  }

  tail() {
    return this.stderrTail.length ? `; its last log lines:\n${this.stderrTail.join("\n")}` : "";
  }

  /** SIGTERM, wait for the bridge's own shutdown, SIGKILL after STOP_TIMEOUT_MS. */
  async stop() {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error("synthesis-bridge is stopping"));
    }
    const child = this.child;
    if (!child) return;
    child.kill("SIGTERM");
    let timer;
    const killed = new Promise((resolve) => {
      timer = setTimeout(() => {
        this.logger.warn?.(`synthesis-bridge did not stop within ${STOP_TIMEOUT_MS} ms of SIGTERM; killing it`);
        child.kill("SIGKILL");
        resolve();
      }, STOP_TIMEOUT_MS);
    });
    await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    await this.exited;
  }
}
