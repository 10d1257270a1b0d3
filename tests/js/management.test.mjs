// The management API with real clients against the real binary: the first admin token printed
// at first start, an app created through /api used a moment later by pusher-js and the `pusher`
// Node SDK, persistence across a restart of the process, and SIGHUP re-reading the config file
// (a bad file is rejected and the old apps stay).

import { after, afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { appToml, startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, serverSdk, subscribed, uniq, waitForEvent } from './lib/client.mjs';

const WAIT_MS = 10_000;
const TOKEN_RE = /admin API token[^:]*: (rc_[0-9a-f]{64})/;

/** The admin token the server printed at first start (after its listening line). */
async function adminToken(server) {
  const m = await until('the generated admin token line', () => TOKEN_RE.exec(server.logs())).catch(() => null);
  assert.ok(m, `no generated admin token in the output:\n${server.logs()}`);
  return m[1];
}

async function api(server, token, method, p, body) {
  const res = await fetch(`http://127.0.0.1:${server.port}${p}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Polls `f` until it returns a truthy value (bounded). */
async function until(what, f, timeoutMs = WAIT_MS) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const dirs = [];
function tempDir() {
  const d = mkdtempSync(path.join(tmpdir(), 'ringcast-mgmt-js-'));
  dirs.push(d);
  return d;
}

describe('management API', () => {
  let servers = [];
  afterEach(async () => {
    closeAllClients();
    for (const s of servers) await s.stop();
    servers = [];
  });
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('an app created through /api serves pusher-js and the pusher Node SDK at once, and survives a restart', async () => {
    const dataDir = tempDir();
    let server = await startServer({ args: ['--data-dir', dataDir] });
    servers.push(server);
    const token = await adminToken(server);

    const created = await api(server, token, 'POST', '/api/apps', { name: 'js', client_events: true });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const app = { appId: created.body.id, key: created.body.keys[0].key, secret: created.body.keys[0].secret };

    const client = await connectedClient(server, app);
    const channel = uniq('private-mgmt-');
    const { channel: ch } = await subscribed(client, channel);
    const got = waitForEvent(ch, 'created-event', WAIT_MS);
    const sdk = serverSdk(server, app);
    const res = await sdk.trigger(channel, 'created-event', { hello: 'world' });
    assert.equal(res.status, 200);
    assert.deepEqual(await got, { hello: 'world' });

    // Restart the process on the same data dir: the app, its key and the token are still there,
    // and no new admin token is generated.
    closeAllClients();
    await server.stop();
    servers = [];
    server = await startServer({ args: ['--data-dir', dataDir] });
    servers.push(server);
    assert.doesNotMatch(server.logs(), TOKEN_RE);
    const listed = await api(server, token, 'GET', `/api/apps/${app.appId}`);
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.equal(listed.body.name, 'js');
    const again = await connectedClient(server, app);
    const { channel: ch2 } = await subscribed(again, channel);
    const got2 = waitForEvent(ch2, 'after-restart', WAIT_MS);
    await serverSdk(server, app).trigger(channel, 'after-restart', { n: 2 });
    assert.deepEqual(await got2, { n: 2 });
  });

  it('SIGHUP applies a changed config file and rejects a bad one, keeping the old apps', async () => {
    const dir = tempDir();
    const cfg = path.join(dir, 'ringcast.toml');
    const first = { id: '1', key: 'hup-key-1', secret: 'hup-secret-1' };
    const second = { id: '2', key: 'hup-key-2', secret: 'hup-secret-2' };
    writeFileSync(cfg, appToml(first));
    const server = await startServer({ args: ['--config', cfg, '--data-dir', path.join(dir, 'data')] });
    servers.push(server);
    const token = await adminToken(server);
    const ids = async () => (await api(server, token, 'GET', '/api/apps')).body.apps.map((a) => a.id);
    assert.deepEqual(await ids(), ['1']);

    writeFileSync(cfg, appToml(first) + appToml(second));
    process.kill(server.pid, 'SIGHUP');
    await until('app 2 after SIGHUP', async () => (await ids()).includes('2'));
    const c = await connectedClient(server, { appId: '2', key: second.key, secret: second.secret });
    const name = uniq('hup-');
    const { channel } = await subscribed(c, name);
    const got = waitForEvent(channel, 'e', WAIT_MS);
    await serverSdk(server, { appId: '2', key: second.key, secret: second.secret }).trigger(name, 'e', 'x');
    assert.equal(await got, 'x');

    writeFileSync(cfg, appToml(first) + 'this is not toml = = =\n');
    process.kill(server.pid, 'SIGHUP');
    await until('the rejection in the log', () => /SIGHUP: config rejected/.test(server.logs()));
    assert.deepEqual(await ids(), ['1', '2']);
    assert.equal(c.connection.state, 'connected');
  });

  it('the dashboard page is served from the binary and /api refuses requests without a token', async () => {
    const server = await startServer();
    servers.push(server);
    const page = await fetch(`http://127.0.0.1:${server.port}/dashboard`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /text\/html/);
    const html = await page.text();
    assert.match(html, /Ringcast/);
    assert.doesNotMatch(html, /https?:\/\/(?!127\.0\.0\.1)[a-z]/i, 'nothing fetched from the internet');
    const res = await fetch(`http://127.0.0.1:${server.port}/api/apps`);
    assert.equal(res.status, 401);
    assert.equal((await res.json()).code, 'unauthorized');
  });
});
