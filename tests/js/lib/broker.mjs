// Real brokers for the cluster tests: a redis-server, a Redis Cluster of 3 masters, a
// nats-server, and a NATS cluster of 3 routed servers. Each runs on ephemeral loopback ports in
// its own temp dir, can be stopped and started again on the same ports (Redis comes back empty:
// no RDB, no AOF; NATS keeps no state anyway), and is killed when the test process exits, even
// after a failure.
//
//   const redis = await startRedis();          // redis.url  -> 'redis://127.0.0.1:PORT'
//   const rc    = await startRedisCluster();   // rc.url     -> 'redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3'
//   const nats  = await startNats();           // nats.url   -> 'nats://127.0.0.1:PORT'
//   const nc    = await startNatsCluster();    // nc.url     -> 'nats://127.0.0.1:P1,nats://127.0.0.1:P2,...'
//   await b.stop();  await b.start();  await b.close();      // stop / restart on the same ports / stop + remove
//
// Ports: bind 127.0.0.1:0, read the port, close, start the server on it; when the server then
// fails to bind (someone took the port in between), pick new ports and try again (bounded).
// Every wait here is bounded; nothing sleeps to synchronize (readiness is polled: PING, /healthz,
// /routez, CLUSTER INFO).

import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';

const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const PORT_ATTEMPTS = 5;
const LOG_TAIL_CHARS = 8_000;
const POLL_MS = 50;

/** Every broker child process this test process started and has not seen exit. */
const live = new Set();
function killAll() {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
  });
}

/** A free TCP port on 127.0.0.1 (bind :0, read, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** n distinct free ports. */
export async function freePorts(n) {
  const out = new Set();
  for (let i = 0; out.size < n && i < n * 10; i += 1) out.add(await freePort());
  if (out.size < n) throw new Error(`could not find ${n} distinct free ports`);
  return [...out];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` (async, truthy = done) every POLL_MS until it holds; throw `what` after timeoutMs. */
export async function pollUntil(fn, what, timeoutMs = READY_TIMEOUT_MS) {
  const t0 = Date.now();
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(POLL_MS);
  }
}

function tail(s) {
  return s.length > LOG_TAIL_CHARS ? '…' + s.slice(-LOG_TAIL_CHARS) : s;
}

/**
 * Spawn one broker process; returns {child, logs(), exited, alive(), kill(signal)}.
 * Output is drained for the whole life of the process.
 */
function spawnProc(cmd, args, cwd) {
  const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child);
      resolve(exitInfo);
    });
    child.on('error', (err) => {
      out = tail(out + `\nspawn error: ${err.message}\n`);
      exitInfo = { code: null, signal: null, error: err };
      live.delete(child);
      resolve(exitInfo);
    });
  });
  for (const s of [child.stdout, child.stderr]) {
    s.setEncoding('utf8');
    s.on('data', (d) => {
      out = tail(out + d);
    });
  }
  return {
    child,
    exited,
    logs: () => out,
    alive: () => exitInfo === null,
    exitInfo: () => exitInfo,
  };
}

/** SIGTERM, bounded wait, then SIGKILL. */
async function stopProc(p, signal = 'SIGTERM') {
  if (!p || !p.alive()) return;
  p.child.kill(signal);
  let t;
  const done = await Promise.race([p.exited.then(() => true), new Promise((r) => (t = setTimeout(() => r(false), STOP_TIMEOUT_MS)))]);
  clearTimeout(t);
  if (!done) {
    p.child.kill('SIGKILL');
    await Promise.race([p.exited, sleep(STOP_TIMEOUT_MS)]);
  }
}

/** Wait until `ready()` holds, or throw (with the logs) when the process exits or time runs out. */
async function awaitReady(p, ready, what) {
  const t0 = Date.now();
  for (;;) {
    if (!p.alive()) {
      const e = p.exitInfo();
      const err = new Error(`${what} exited before it was ready (code=${e.code}, signal=${e.signal})\n${p.logs()}`);
      err.bindFailure = /address already in use|EADDRINUSE|bind/i.test(p.logs());
      throw err;
    }
    try {
      if (await ready()) return;
    } catch {
      // not yet
    }
    if (Date.now() - t0 > READY_TIMEOUT_MS) {
      await stopProc(p, 'SIGKILL');
      throw new Error(`${what} not ready within ${READY_TIMEOUT_MS} ms\n${p.logs()}`);
    }
    await sleep(POLL_MS);
  }
}

// ---------------------------------------------------------------------------------------------
// Redis

/** Run redis-cli with args; resolves with stdout (rejects on a non-zero exit), bounded. */
export function redisCli(args, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

async function redisPing(port, password) {
  const auth = password ? ['-a', password, '--no-auth-warning'] : [];
  const out = await redisCli(['-h', '127.0.0.1', '-p', String(port), ...auth, 'PING'], 2_000);
  return out.trim() === 'PONG';
}

function redisArgs(port, dir, extra = []) {
  return [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--save', '',
    '--appendonly', 'no',
    '--protected-mode', 'no',
    ...extra,
  ];
}

/** One redis-server process on `port` (+ extra args); waits for PING. */
async function spawnRedis(port, dir, extra, password) {
  const p = spawnProc('redis-server', redisArgs(port, dir, extra), dir);
  await awaitReady(p, () => redisPing(port, password), `redis-server on ${port}`);
  return p;
}

/** Try `attempt(ports)` with fresh free ports until it does not fail on a bind (bounded). */
async function withFreshPorts(n, attempt) {
  let lastErr;
  for (let i = 0; i < PORT_ATTEMPTS; i += 1) {
    const ports = await freePorts(n);
    try {
      return await attempt(ports);
    } catch (err) {
      lastErr = err;
      if (!err.bindFailure) throw err;
    }
  }
  throw lastErr;
}

/**
 * A single redis-server on an ephemeral port, no persistence (a restart comes back empty).
 * @param {{password?:string}} [o]
 */
export async function startRedis(o = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'ringcast-redis-'));
  const extra = o.password ? ['--requirepass', o.password] : [];
  let proc;
  const port = await withFreshPorts(1, async ([p]) => {
    proc = await spawnRedis(p, dir, extra, o.password);
    return p;
  });
  const auth = o.password ? `:${encodeURIComponent(o.password)}@` : '';
  return {
    kind: 'redis',
    port,
    url: `redis://${auth}127.0.0.1:${port}`,
    /** Stop the server (SIGTERM; it saves nothing). */
    async stop() {
      await stopProc(proc);
    },
    /** Start it again on the same port, empty. */
    async start() {
      if (proc.alive()) return;
      proc = await spawnRedis(port, dir, extra, o.password);
    },
    async close() {
      await stopProc(proc);
      rmSync(dir, { recursive: true, force: true });
    },
    logs: () => proc.logs(),
  };
}

/**
 * A Redis Cluster of 3 masters (no replicas) built with `redis-cli --cluster create`, each node
 * with its own client and cluster-bus port (`cluster-port`, Redis >= 7), ready once every node's
 * CLUSTER INFO says cluster_state:ok.
 */
export async function startRedisCluster() {
  const dirs = [0, 1, 2].map(() => mkdtempSync(path.join(tmpdir(), 'ringcast-redis-cluster-')));
  const procs = [];
  const ports = await withFreshPorts(6, async (ps) => {
    try {
      for (let i = 0; i < 3; i += 1) {
        procs[i] = await spawnRedis(ps[i], dirs[i], [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', 'nodes.conf',
          '--cluster-node-timeout', '5000',
          '--cluster-port', String(ps[3 + i]),
        ]);
      }
    } catch (err) {
      for (const p of procs) await stopProc(p, 'SIGKILL');
      procs.length = 0;
      throw err;
    }
    return ps;
  });
  const clientPorts = ports.slice(0, 3);
  await redisCli(['--cluster', 'create', ...clientPorts.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], 30_000);
  for (const p of clientPorts) {
    await pollUntil(async () => (await redisCli(['-h', '127.0.0.1', '-p', String(p), 'CLUSTER', 'INFO'], 2_000)).includes('cluster_state:ok'),
      `redis cluster node ${p} to report cluster_state:ok`);
  }
  return {
    kind: 'redis-cluster',
    ports: clientPorts,
    url: `redis-cluster://${clientPorts.map((p) => `127.0.0.1:${p}`).join(',')}`,
    /** Node i's own URL (a client seeds from it and follows MOVED). */
    nodeUrl: (i) => `redis-cluster://127.0.0.1:${clientPorts[i]}`,
    async close() {
      for (const p of procs) await stopProc(p);
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
    logs: () => procs.map((p, i) => `--- redis cluster node ${i} ---\n${p.logs()}`).join('\n'),
  };
}

// ---------------------------------------------------------------------------------------------
// NATS

function httpJson(port, pathname, timeoutMs = 2_000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathname, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode, body: JSON.parse(body) });
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** nats-server by PATH, else where Debian installs it (/usr/sbin, often not on a user's PATH). */
const NATS_SERVER = ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server']
  .find((p) => existsSync(p)) ?? 'nats-server';

async function spawnNats(args, monitorPort, what) {
  const p = spawnProc(NATS_SERVER, [...args, '-m', String(monitorPort)], undefined);
  await awaitReady(p, async () => (await httpJson(monitorPort, '/healthz')).status === 200, what);
  return p;
}

/** A single nats-server on an ephemeral port (plus a monitoring port used for readiness). */
export async function startNats() {
  let proc;
  const [port, mon] = await withFreshPorts(2, async (ps) => {
    proc = await spawnNats(['-a', '127.0.0.1', '-p', String(ps[0])], ps[1], `nats-server on ${ps[0]}`);
    return ps;
  });
  const args = ['-a', '127.0.0.1', '-p', String(port)];
  return {
    kind: 'nats',
    port,
    monitorPort: mon,
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      await stopProc(proc);
    },
    async start() {
      if (proc.alive()) return;
      proc = await spawnNats(args, mon, `nats-server on ${port}`);
    },
    async close() {
      await stopProc(proc);
    },
    logs: () => proc.logs(),
  };
}

/**
 * A NATS cluster of 3 servers with explicit routes to each other (`--cluster` + `--routes`),
 * ready once every server's /routez shows 2 routes.
 */
export async function startNatsCluster() {
  const procs = [];
  const ports = await withFreshPorts(9, async (ps) => {
    const client = ps.slice(0, 3);
    const cluster = ps.slice(3, 6);
    const mon = ps.slice(6, 9);
    try {
      for (let i = 0; i < 3; i += 1) {
        const routes = cluster.filter((_, j) => j !== i).map((p) => `nats://127.0.0.1:${p}`).join(',');
        procs[i] = await spawnNats(
          ['-a', '127.0.0.1', '-p', String(client[i]), '-n', `nats-${i}`, '--cluster_name', 'ringcast-test',
            '--cluster', `nats://127.0.0.1:${cluster[i]}`, '--routes', routes],
          mon[i], `nats cluster server ${i} on ${client[i]}`,
        );
      }
    } catch (err) {
      for (const p of procs) await stopProc(p, 'SIGKILL');
      procs.length = 0;
      throw err;
    }
    return ps;
  });
  const client = ports.slice(0, 3);
  const mon = ports.slice(6, 9);
  for (let i = 0; i < 3; i += 1) {
    await pollUntil(async () => (await httpJson(mon[i], '/routez')).body.num_routes >= 2, `nats server ${i} to have 2 routes`);
  }
  return {
    kind: 'nats-cluster',
    ports: client,
    url: client.map((p) => `nats://127.0.0.1:${p}`).join(','),
    /** Server i's own URL, so each ringcast node can talk to a different server. */
    nodeUrl: (i) => `nats://127.0.0.1:${client[i]}`,
    async close() {
      for (const p of procs) await stopProc(p);
    },
    logs: () => procs.map((p, i) => `--- nats server ${i} ---\n${p.logs()}`).join('\n'),
  };
}

// ---------------------------------------------------------------------------------------------
// Raw protocol access, to put foreign / malformed traffic on the subjects and keys ringcast uses.

/** One TCP exchange: write `out`, collect input until `done(buffer)` is true (bounded). */
function tcpExchange(port, onData, timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer from 127.0.0.1:${port} within ${timeoutMs} ms: ${buf.toString('latin1').slice(0, 200)}`));
    }, timeoutMs);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      let r;
      try {
        r = onData(buf, sock);
      } catch (err) {
        clearTimeout(t);
        sock.destroy();
        reject(err);
        return;
      }
      if (r !== undefined) {
        clearTimeout(t);
        sock.end();
        resolve(r);
      }
    });
    sock.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/** Redis PUBLISH (or SPUBLISH) of a binary payload over raw RESP; resolves with the receiver count. */
export function redisPublish(port, channel, payload, { command = 'PUBLISH' } = {}) {
  const parts = [Buffer.from(command), Buffer.from(channel), Buffer.isBuffer(payload) ? payload : Buffer.from(payload)];
  const req = Buffer.concat([
    Buffer.from(`*${parts.length}\r\n`),
    ...parts.flatMap((p) => [Buffer.from(`$${p.length}\r\n`), p, Buffer.from('\r\n')]),
  ]);
  let sent = false;
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => {
      sock.write(req);
      sent = true;
    });
    let buf = '';
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${command}: no answer (sent=${sent})`));
    }, 5_000);
    sock.setEncoding('latin1');
    sock.on('data', (d) => {
      buf += d;
      const m = /^:(\d+)\r\n/.exec(buf);
      if (m || buf.startsWith('-')) {
        clearTimeout(t);
        sock.end();
        if (m) resolve(Number(m[1]));
        else reject(new Error(`redis ${command}: ${buf.trim()}`));
      }
    });
    sock.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/** The pub/sub channels that have subscribers on a redis-server (PUBSUB CHANNELS). */
export async function redisPubsubChannels(port) {
  const out = await redisCli(['-h', '127.0.0.1', '-p', String(port), 'PUBSUB', 'CHANNELS', '*']);
  return out.split('\n').map((l) => l.trim()).filter(Boolean);
}

/** Every subject some client subscribes to on a nats-server (monitoring /connz?subs=1). */
export async function natsSubjects(monitorPort) {
  const { body } = await httpJson(monitorPort, '/connz?subs=1&limit=1024');
  const subs = new Set();
  for (const c of body.connections ?? []) for (const s of c.subscriptions_list ?? []) subs.add(s);
  return [...subs];
}

/** Publish raw payloads on NATS subjects (plain protocol: CONNECT, PUB..., PING -> PONG). */
export function natsPublish(port, messages) {
  let stage = 0;
  return tcpExchange(port, (buf, sock) => {
    const text = buf.toString('latin1');
    if (stage === 0 && text.includes('INFO ')) {
      stage = 1;
      const chunks = [Buffer.from('CONNECT {"verbose":false,"pedantic":false,"name":"ringcast-test-garbage"}\r\n')];
      for (const { subject, payload } of messages) {
        const b = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
        chunks.push(Buffer.from(`PUB ${subject} ${b.length}\r\n`), b, Buffer.from('\r\n'));
      }
      chunks.push(Buffer.from('PING\r\n'));
      sock.write(Buffer.concat(chunks));
      return undefined;
    }
    if (stage === 1 && text.includes('PONG')) return true;
    if (text.includes('-ERR')) throw new Error(`nats: ${text}`);
    return undefined;
  });
}

/** Start a broker by kind: 'redis' | 'nats' | 'redis-cluster' | 'nats-cluster'. */
export function startBroker(kind, o) {
  switch (kind) {
    case 'redis':
      return startRedis(o);
    case 'nats':
      return startNats(o);
    case 'redis-cluster':
      return startRedisCluster(o);
    case 'nats-cluster':
      return startNatsCluster(o);
    default:
      throw new Error(`unknown broker kind ${kind}`);
  }
}
