// Ringcast cluster nodes for the cluster tests, plus the bounded waits, the counting webhook
// receiver and the pusher-js / SDK helpers those tests share.
//
//   const broker = await startBroker('redis');                 // lib/broker.mjs
//   const nodes  = await startNodes(3, { cluster: broker.url, leaseMs: 2000, config: appConfig({webhookUrl}) });
//   nodes[0].port, nodes[0].sdk (pusher Node SDK bound to that node), await nodes[2].kill()  // kill -9
//   await nodes[1].stop()  // SIGTERM, bounded
//   await waitFor(async () => ..., 'what we wait for', 20_000)
//
// Each node is `$RINGCAST_BIN --listen 127.0.0.1:0 --config <temp> --cluster URL --node-id ID
// --cluster-lease-ms N`; startNode waits (bounded) for both `ringcast: listening on IP:PORT` and
// `ringcast: cluster <backend> node <id>` (on stdout or stderr). Nodes still running when the test
// process exits are killed.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { DEFAULT_APP, REPO_ROOT, ringcastBin } from './server.mjs';
import { connectedClient, PusherServer, serverSdk, waitForEvent } from './client.mjs';

/** Default bound for one cluster condition (lease 2 s + reconnects on a loaded 2-core machine). */
export const WAIT_MS = 20_000;
const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 15_000;
const LOG_TAIL_CHARS = 12_000;
const POLL_MS = 50;

const LISTENING_RE = /listening on (\d+\.\d+\.\d+\.\d+):(\d+)/;
const CLUSTER_RE = /ringcast: cluster (\S+) node (\S+)/;

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tail(s) {
  return s.length > LOG_TAIL_CHARS ? '…' + s.slice(-LOG_TAIL_CHARS) : s;
}

/**
 * Wait until `cond()` (sync or async) returns a truthy value; poll every 50 ms; throw after
 * timeoutMs with `what` and the last value / error (`describe(last)` formats it). Returns the value.
 */
export async function waitFor(cond, what, timeoutMs = WAIT_MS, describeLast = (v) => JSON.stringify(v)) {
  const t0 = Date.now();
  let last;
  let lastErr;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
      last = v;
      lastErr = undefined;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() - t0 > timeoutMs) {
      const detail = lastErr ? `last error: ${lastErr.message}` : `last: ${describeLast(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${detail})`);
    }
    await sleep(POLL_MS);
  }
}

/**
 * Poll `get()` until its value deep-equals `expected` (bounded). The failure names what was
 * last seen, so a wrong-but-stable answer is visible.
 */
export async function waitForEqual(get, expected, what, timeoutMs = WAIT_MS) {
  let last;
  try {
    await waitFor(async () => {
      last = await get();
      try {
        assert.deepEqual(last, expected);
        return true;
      } catch {
        return false;
      }
    }, what, timeoutMs);
  } catch (err) {
    throw new Error(`${err.message}\n  expected: ${JSON.stringify(expected)}\n  last:     ${JSON.stringify(last)}`);
  }
}

/** The second app of appConfig(): event history on. */
export const HISTORY_APP = Object.freeze({ appId: 'hist-app', key: 'hist-key', secret: 'hist-secret' });

/** The app config (TOML) every node of a test cluster shares. */
export function appConfig({ webhookUrl, extra = '' } = {}) {
  let toml = `[[apps]]
id = "${DEFAULT_APP.appId}"
key = "${DEFAULT_APP.key}"
secret = "${DEFAULT_APP.secret}"
client_events = true
client_events_per_sec = 1000
subscription_count = true
${extra}
`;
  if (webhookUrl) toml += `[[apps.webhooks]]\nurl = "${webhookUrl}"\n`;
  // A second app with event history on (kept apart so the first app's routing stays interest-based).
  toml += `\n[[apps]]\nid = "${HISTORY_APP.appId}"\nkey = "${HISTORY_APP.key}"\nsecret = "${HISTORY_APP.secret}"\nhistory_size = 100\n`;
  return toml;
}

/**
 * Start one ringcast node in the cluster at `cluster` (a broker URL).
 * @param {object} o
 * @param {string} o.cluster   --cluster URL
 * @param {string} o.nodeId    --node-id
 * @param {number} [o.leaseMs] --cluster-lease-ms (default 2000)
 * @param {string} [o.config]  TOML text (default appConfig())
 * @param {string[]} [o.args]  more arguments
 * @param {boolean} [o.toml]   put url/node_id/lease_ms (and prefix) in a [cluster] table, not on the command line
 * @param {string} [o.prefix]  [cluster] prefix (only with toml)
 */
export async function startNode(o) {
  const bin = ringcastBin();
  const tmp = mkdtempSync(path.join(tmpdir(), 'ringcast-node-'));
  const file = path.join(tmp, 'ringcast.toml');
  let config = o.config ?? appConfig();
  const args = ['--listen', '127.0.0.1:0', '--config', file];
  if (o.toml) {
    // The [cluster] table instead of the command line (a top-level table: after the apps).
    config += `\n[cluster]\nurl = ${JSON.stringify(o.cluster)}\nnode_id = ${JSON.stringify(o.nodeId)}\n` +
      `lease_ms = ${o.leaseMs ?? 2000}\n${o.prefix ? `prefix = ${JSON.stringify(o.prefix)}\n` : ''}`;
  } else {
    args.push('--cluster', o.cluster, '--node-id', o.nodeId, '--cluster-lease-ms', String(o.leaseMs ?? 2000));
  }
  args.push(...(o.args ?? []));
  writeFileSync(file, config);
  const child = spawn(bin, args, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: process.env.RUST_BACKTRACE ?? '1', NO_COLOR: '1' },
  });
  live.add(child);
  let stdout = '';
  let stderr = '';
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    const done = (info) => {
      if (exitInfo) return;
      exitInfo = info;
      live.delete(child);
      rmSync(tmp, { recursive: true, force: true });
      resolve(exitInfo);
    };
    child.on('exit', (code, signal) => done({ code, signal }));
    child.on('error', (err) => done({ code: null, signal: null, error: err.message }));
  });
  const logs = () => `--- ${o.nodeId} stdout ---\n${stdout}\n--- ${o.nodeId} stderr ---\n${stderr}`;
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => (stdout = tail(stdout + d)));
  child.stderr.on('data', (d) => (stderr = tail(stderr + d)));

  let addr;
  let backend;
  try {
    await waitFor(() => {
      if (exitInfo) throw new Error(`exited (code=${exitInfo.code}, signal=${exitInfo.signal})`);
      const all = stdout + stderr;
      const l = LISTENING_RE.exec(all);
      const c = CLUSTER_RE.exec(all);
      if (l) addr = { host: l[1], port: Number(l[2]) };
      if (c) backend = c[1];
      return l && c;
    }, `node ${o.nodeId} to print "listening on" and "ringcast: cluster"`, READY_TIMEOUT_MS);
  } catch (err) {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone
    }
    await Promise.race([exited, sleep(5_000)]);
    throw new Error(`${err.message}\n${logs()}`);
  }

  const node = {
    id: o.nodeId,
    backend,
    host: addr.host,
    port: addr.port,
    url: `ws://${addr.host}:${addr.port}`,
    pid: child.pid,
    logs,
    exited,
    alive: () => exitInfo === null,
    sdk: serverSdk(addr),
    /** kill -9: no goodbye, the survivors must notice through the lease. */
    async kill() {
      if (exitInfo) return exitInfo;
      child.kill('SIGKILL');
      return Promise.race([exited, sleep(STOP_TIMEOUT_MS).then(() => ({ hung: true }))]);
    },
    /** SIGTERM (graceful), bounded, then SIGKILL. */
    async stop(signal = 'SIGTERM') {
      if (exitInfo) return exitInfo;
      child.kill(signal);
      const r = await Promise.race([exited, sleep(STOP_TIMEOUT_MS).then(() => null)]);
      if (r) return r;
      child.kill('SIGKILL');
      await Promise.race([exited, sleep(5_000)]);
      return { ...(exitInfo ?? {}), killed: true };
    },
    /** GET /health -> {status, body}. */
    health: () => getJson(addr.port, '/health'),
    /** GET /metrics text. */
    metrics: () => getText(addr.port, '/metrics'),
  };
  return node;
}

/**
 * Start `n` nodes n0..n{n-1}. `cluster` is a URL or a function (i) -> URL (to point each node
 * at a different server of a broker cluster).
 */
export async function startNodes(n, { cluster, leaseMs, config, args, idPrefix = 'n', toml, prefix }) {
  const nodes = [];
  try {
    for (let i = 0; i < n; i += 1) {
      const url = typeof cluster === 'function' ? cluster(i) : cluster;
      nodes.push(await startNode({ cluster: url, nodeId: `${idPrefix}${i}`, leaseMs, config, args, toml, prefix }));
    }
  } catch (err) {
    await stopNodes(nodes);
    throw err;
  }
  return nodes;
}

/** Stop every node still running (SIGTERM, bounded). */
export async function stopNodes(nodes) {
  await Promise.all(nodes.filter((nd) => nd && nd.alive()).map((nd) => nd.stop()));
}

/** All logs of `nodes`, for failure messages. */
export function nodeLogs(nodes) {
  return nodes.map((nd) => nd.logs()).join('\n');
}

function request(port, pathname) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathname, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, text: body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

async function getJson(port, pathname) {
  const r = await request(port, pathname);
  let body;
  try {
    body = JSON.parse(r.text);
  } catch {
    body = r.text;
  }
  return { status: r.status, body };
}

async function getText(port, pathname) {
  return (await request(port, pathname)).text;
}

// ---------------------------------------------------------------------------------------------
// The HTTP API seen from every node

/** GET path (with params) through node's SDK -> parsed JSON body (throws on non-200). */
export async function apiGet(node, pathname, params) {
  const res = await node.sdk.get({ path: pathname, params });
  return res.json();
}

/** /channels/{name} with info, as answered by `node`. */
export function channelInfo(node, channel, info = 'subscription_count') {
  return apiGet(node, `/channels/${channel}`, info ? { info } : undefined);
}

/** Sorted user ids from /channels/{name}/users on `node`. */
export async function userIds(node, channel) {
  const body = await apiGet(node, `/channels/${channel}/users`);
  return body.users.map((u) => u.id).sort();
}

/** Wait until every node answers `get(node)` deep-equal to `expected`. */
export async function everyNode(nodes, get, expected, what, timeoutMs = WAIT_MS) {
  await Promise.all(nodes.map((nd) => waitForEqual(() => get(nd), expected, `${what} from ${nd.id}`, timeoutMs)));
}

// ---------------------------------------------------------------------------------------------
// Clients

/** A pusher-js client on `node` (optionally a presence user {user_id, user_info}). */
export function clientOn(node, user) {
  return connectedClient(node, user ? { user } : {}, 10_000);
}

/** Subscribe and wait (bounded) for subscription_succeeded; returns {channel, data}. */
export async function join(pusher, name, timeoutMs = 10_000) {
  const channel = pusher.subscribe(name);
  const data = await waitForEvent(channel, 'pusher:subscription_succeeded', timeoutMs);
  return { channel, data };
}

/**
 * Every emission of `event` on `target` (a pusher-js channel or user object), with `until`
 * helpers; count(pred) counts matching ones.
 */
export function collect(target, event) {
  const got = [];
  const fn = (...args) => got.push(args);
  target.bind(event, fn);
  return {
    got,
    data: () => got.map((a) => a[0]),
    count: (pred = () => true) => got.filter((a) => pred(...a)).length,
    until: (pred, what, timeoutMs) => waitFor(() => pred(got), what ?? `${event} on ${target.name ?? 'target'}`, timeoutMs, () => JSON.stringify(got.map((a) => a[0]))),
    stop: () => target.unbind(event, fn),
  };
}

/**
 * A pusher-js client on `node` signed in as `user` ({id, user_info?}) with pusher.signin() and a
 * userAuthentication handler signing with the SDK's authenticateUser; resolves once its
 * #server-to-user channel is subscribed.
 */
export async function signedInOn(node, user) {
  const userAuthentication = {
    customHandler: ({ socketId }, callback) => {
      try {
        callback(null, node.sdk.authenticateUser(socketId, user));
      } catch (err) {
        callback(err, null);
      }
    },
  };
  const p = await connectedClient(node, { options: { userAuthentication } }, 10_000);
  const ready = waitForEvent(p.connection, 'message', 10_000, {
    filter: (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${user.id}`,
  });
  const success = waitForEvent(p.connection, 'message', 10_000, { filter: (m) => m.event === 'pusher:signin_success' });
  p.signin();
  await success;
  await ready;
  return p;
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/**
 * A webhook receiver that checks every request with the SDK's pusher.webhook(...).isValid() and
 * keeps every event it got (so duplicates are countable).
 */
export async function startReceiver() {
  const sdk = new PusherServer({ appId: DEFAULT_APP.appId, key: DEFAULT_APP.key, secret: DEFAULT_APP.secret });
  const requests = [];
  const events = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      let valid = false;
      let evs = [];
      try {
        const webhook = sdk.webhook({ headers: req.headers, rawBody });
        valid = webhook.isValid();
        if (valid) evs = webhook.getEvents();
      } catch {
        valid = false;
      }
      requests.push({ headers: req.headers, rawBody, valid });
      events.push(...evs);
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/hook`,
    requests,
    events,
    /** Events matching {name, channel, user_id...} (every given key equal). */
    matching(match) {
      return events.filter((e) => Object.entries(match).every(([k, v]) => e[k] === v));
    },
    count(match) {
      return this.matching(match).length;
    },
    /** Wait (bounded) until at least one event matches each of `matches`. */
    async until(matches, timeoutMs = WAIT_MS) {
      const list = Array.isArray(matches) ? matches : [matches];
      await waitFor(() => list.every((m) => this.count(m) > 0), `webhooks ${JSON.stringify(list)}`, timeoutMs,
        () => JSON.stringify(events.slice(-30)));
    },
    close: () => new Promise((r) => {
      srv.closeAllConnections?.();
      srv.close(r);
    }),
  };
}
