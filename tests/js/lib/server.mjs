// Start / stop a real `ringcast` server process for the real-client tests.
//
//   const server = await startServer();                      // default app (app-id / app-key / app-secret)
//   const server = await startServer({ config: TOML_TEXT });  // temp --config file
//   const server = await startServer({ args: ['--workers', '2'] });
//   server.host, server.port, server.url  ->  127.0.0.1, 43817, 'ws://127.0.0.1:43817'
//   const exit = await server.stop();      // SIGTERM (or {signal:'SIGINT'}), bounded wait, SIGKILL fallback
//
// The binary is $RINGCAST_BIN if set (absolute, or relative to the cwd or the repo root),
// else $CARGO_TARGET_DIR/debug/ringcast, else <repo root>/target/debug/ringcast.
// Only 127.0.0.1 is ever used.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Repo root: tests/js/lib -> tests/js -> tests -> root. */
export const REPO_ROOT = path.resolve(HERE, '..', '..', '..');

export const DEFAULT_APP = Object.freeze({
  appId: 'app-id',
  key: 'app-key',
  secret: 'app-secret',
});

const LISTENING_RE = /listening on (\d+\.\d+\.\d+\.\d+):(\d+)/;
const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;
const KILL_TIMEOUT_MS = 5_000;
const LOG_TAIL_CHARS = 8_000;

/** Every server this process started and has not seen exit; killed on process exit. */
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Absolute path of the ringcast binary (throws a clear error if it does not exist). */
export function ringcastBin() {
  const candidates = [];
  const fromEnv = process.env.RINGCAST_BIN;
  if (fromEnv) {
    if (path.isAbsolute(fromEnv)) {
      candidates.push(fromEnv);
    } else {
      candidates.push(path.resolve(process.cwd(), fromEnv), path.resolve(REPO_ROOT, fromEnv));
    }
  } else {
    if (process.env.CARGO_TARGET_DIR) {
      candidates.push(path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR, 'debug', 'ringcast'));
    }
    candidates.push(path.join(REPO_ROOT, 'target', 'debug', 'ringcast'));
  }
  for (const c of candidates) {
    if (existsSync(c)) return c;
  }
  throw new Error(
    `ringcast binary not found (tried: ${candidates.join(', ')}); ` +
      'run `cargo build --bin ringcast` or set RINGCAST_BIN',
  );
}

function tail(s) {
  return s.length > LOG_TAIL_CHARS ? '…' + s.slice(-LOG_TAIL_CHARS) : s;
}

/**
 * Start ringcast on an ephemeral loopback port and wait (bounded) for its "listening on" line.
 * @param {object} [opts]
 * @param {string[]} [opts.args]    extra command-line arguments
 * @param {string}   [opts.config]  TOML text written to a temp file and passed as --config
 * @param {number}   [opts.readyTimeoutMs]
 * @returns {Promise<{host:string, port:number, url:string, pid:number, logs:()=>string,
 *                    exited:Promise<{code:number|null, signal:string|null}>,
 *                    stop:(opts?:{timeoutMs?:number, signal?:string})=>Promise<{code:number|null, signal:string|null, killed:boolean, ms:number}>}>}
 */
export async function startServer(opts = {}) {
  const bin = ringcastBin();
  const args = ['--listen', '127.0.0.1:0'];
  let tmp = null;
  if (opts.config !== undefined) {
    tmp = mkdtempSync(path.join(tmpdir(), 'ringcast-test-'));
    const file = path.join(tmp, 'ringcast.toml');
    writeFileSync(file, opts.config);
    args.push('--config', file);
  }
  if (opts.args) args.push(...opts.args);
  // Every server gets its own management store unless the test names one (--data-dir).
  let dataTmp = null;
  if (!args.includes('--data-dir')) {
    dataTmp = mkdtempSync(path.join(tmpdir(), 'ringcast-data-'));
    args.push('--data-dir', dataTmp);
  }

  const child = spawn(bin, args, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: process.env.RUST_BACKTRACE ?? '1' },
  });
  live.add(child);

  let stdout = '';
  let stderr = '';
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child);
      if (tmp) rmSync(tmp, { recursive: true, force: true });
      if (dataTmp) rmSync(dataTmp, { recursive: true, force: true });
      resolve(exitInfo);
    });
  });
  const spawnError = new Promise((_, reject) => {
    child.on('error', (err) => reject(new Error(`failed to spawn ${bin}: ${err.message}`)));
  });
  spawnError.catch(() => {}); // only observed through the race below
  // Keep draining both pipes for the whole life of the process (a full pipe would block it).
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr = tail(stderr + d);
  });
  child.stdout.setEncoding('utf8');

  const logs = () => `--- ringcast stdout ---\n${stdout}\n--- ringcast stderr ---\n${stderr}`;
  const readyMs = opts.readyTimeoutMs ?? READY_TIMEOUT_MS;

  const ready = new Promise((resolve, reject) => {
    let found = false;
    child.stdout.on('data', (d) => {
      stdout = tail(stdout + d);
      if (!found) {
        const m = LISTENING_RE.exec(stdout);
        if (m) {
          found = true;
          resolve({ host: m[1], port: Number(m[2]) });
        }
      }
    });
    exited.then((e) => {
      if (!found) {
        reject(new Error(`ringcast exited before listening (code=${e.code}, signal=${e.signal})\n${logs()}`));
      }
    });
  });

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`ringcast did not print "listening on" within ${readyMs} ms\n${logs()}`)),
      readyMs,
    );
  });

  let addr;
  try {
    addr = await Promise.race([ready, timeout, spawnError]);
  } catch (err) {
    child.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, KILL_TIMEOUT_MS))]);
    throw err;
  } finally {
    clearTimeout(timer);
  }
  if (addr.host !== '127.0.0.1') {
    child.kill('SIGKILL');
    throw new Error(`ringcast listens on ${addr.host}, expected 127.0.0.1`);
  }

  async function stop({ timeoutMs = STOP_TIMEOUT_MS, signal = 'SIGTERM' } = {}) {
    const t0 = Date.now();
    if (exitInfo) return { ...exitInfo, killed: false, ms: 0 };
    child.kill(signal);
    let t;
    const graceful = await Promise.race([
      exited.then(() => true),
      new Promise((r) => {
        t = setTimeout(() => r(false), timeoutMs);
      }),
    ]);
    clearTimeout(t);
    if (graceful) return { ...exitInfo, killed: false, ms: Date.now() - t0 };
    child.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, KILL_TIMEOUT_MS))]);
    return { ...(exitInfo ?? { code: null, signal: null }), killed: true, ms: Date.now() - t0 };
  }

  return {
    host: addr.host,
    port: addr.port,
    url: `ws://${addr.host}:${addr.port}`,
    pid: child.pid,
    logs,
    exited,
    stop,
  };
}

/** TOML for a single [[apps]] entry (strings quoted; numbers/bools as-is). */
export function appToml(app) {
  const lines = ['[[apps]]'];
  for (const [k, v] of Object.entries(app)) {
    if (v === undefined) continue;
    lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n') + '\n';
}

function tomlValue(v) {
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (typeof v === 'string') return JSON.stringify(v); // JSON string escapes are valid TOML basic strings
  return String(v);
}
