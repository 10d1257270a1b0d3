// The seed HTTP dialect (Authorization: Bearer <app secret>) and the operator endpoints, with
// stock pusher-js clients on the receiving end: Bearer publish/batch, channel and user shapes,
// server-side channel authorization (off by default, per-app patterns) used as pusher-js's
// auth handler, /health, /stats, /metrics, and --api-listen (REST on its own port, the public
// port then serves WebSocket + /health only).
// Needs: the HTTP API.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appToml, startServer } from './lib/server.mjs';
import {
  closeAllClients,
  connectedClient,
  delay,
  record,
  serverSdk,
  subscribed,
  uniq,
  waitForEvent,
} from './lib/client.mjs';

const QUIET_MS = 1_000;
const FETCH_TIMEOUT_MS = 5_000;

const CONFIG =
  appToml({
    id: 'app-id',
    key: 'app-key',
    secret: 'app-secret',
    server_auth_channels: ['private-support-*', 'presence-support-*'],
  }) +
  appToml({ id: 'locked', key: 'locked-key', secret: 'locked-secret' });

/** fetch with a bounded wait; returns {status, headers, text, json()}. */
async function call(base, method, path, { bearer, body, headers = {} } = {}) {
  const h = { ...headers };
  if (bearer !== undefined) h.authorization = `Bearer ${bearer}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    if (!h['content-type']) h['content-type'] = 'application/json';
  }
  const res = await fetch(`${base}${path}`, {
    method,
    headers: h,
    body: payload,
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

describe('seed dialect (Bearer) and operator endpoints', { timeout: 120_000 }, () => {
  let server;
  let base;
  before(async () => {
    server = await startServer({ config: CONFIG });
    base = `http://${server.host}:${server.port}`;
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('Bearer POST /events and /events/batch reach pusher-js subscribers', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, name)).channel, 'seeded');
    let r = await call(base, 'POST', '/apps/app-id/events', {
      bearer: 'app-secret',
      body: { channel: name, event: 'seeded', data: { n: 1 } },
    });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json(), { ok: true });
    assert.deepEqual((await got.next(5_000))[0], { n: 1 });

    r = await call(base, 'POST', '/apps/app-id/events/batch', {
      bearer: 'app-secret',
      body: { batch: [{ channel: name, event: 'seeded', data: { n: 2 } }, { channel: name, event: 'seeded', data: '{"n":3}' }] },
    });
    assert.deepEqual(r.json(), { ok: true, count: 2 });
    assert.deepEqual((await got.next(5_000))[0], { n: 2 });
    assert.deepEqual((await got.next(5_000))[0], { n: 3 });

    // socket_id exclusion (the publisher's own connection).
    r = await call(base, 'POST', '/apps/app-id/events', {
      bearer: 'app-secret',
      body: { channel: name, event: 'seeded', data: 'mine', socket_id: p.connection.socket_id },
    });
    assert.equal(r.status, 200);
    await delay(QUIET_MS);
    assert.equal(got.count, 3);
  });

  it('Bearer GET channels / channel / users return the seed shapes', { timeout: 20_000 }, async () => {
    const pres = uniq('presence-');
    const a = await connectedClient(server, { user: { user_id: 'seed-a', user_info: { name: 'A' } } });
    const b = await connectedClient(server, { user: { user_id: 'seed-b', user_info: { name: 'B' } } });
    await subscribed(a, pres);
    await subscribed(b, pres);
    let r = await call(base, 'GET', `/apps/app-id/channels?filter_by_prefix=${pres}`, { bearer: 'app-secret' });
    assert.deepEqual(r.json(), {
      channels: [{ name: pres, type: 'presence', subscriber_count: 2, occupied: true, app_id: 'app-id', user_count: 2 }],
    });
    r = await call(base, 'GET', `/apps/app-id/channels/${pres}`, { bearer: 'app-secret' });
    assert.deepEqual(r.json(), { name: pres, type: 'presence', subscriber_count: 2, occupied: true, app_id: 'app-id', user_count: 2 });
    r = await call(base, 'GET', `/apps/app-id/channels/${pres}/users`, { bearer: 'app-secret' });
    const users = r.json().users.sort((x, y) => x.id.localeCompare(y.id));
    assert.deepEqual(users, [
      { id: 'seed-a', user_info: { name: 'A' } },
      { id: 'seed-b', user_info: { name: 'B' } },
    ]);
    // The same path signed the Pusher way gets the Pusher shape.
    const sdk = serverSdk(server);
    const pusherShape = await (await sdk.get({ path: `/channels/${pres}` })).json();
    assert.deepEqual(pusherShape, { occupied: true });
  });

  it('Bearer with a wrong secret is 401 and publishes nothing', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, name)).channel, 'nope');
    for (const secret of ['wrong', 'locked-secret', '']) {
      const r = await call(base, 'POST', '/apps/app-id/events', {
        bearer: secret,
        body: { channel: name, event: 'nope', data: '1' },
      });
      assert.equal(r.status, 401, r.text);
      assert.equal(typeof r.json().error, 'string');
    }
    const r = await call(base, 'POST', '/apps/app-id/events', { body: { channel: name, event: 'nope', data: '1' } });
    assert.equal(r.status, 401);
    assert.equal(r.json().code, 'unauthenticated');
    await delay(QUIET_MS);
    assert.equal(got.count, 0);
  });

  it('server-side auth signs allowed channels and works as pusher-js\'s auth handler', { timeout: 20_000 }, async () => {
    const name = `private-support-${uniq('t')}`;
    const calls = [];
    const customHandler = ({ socketId, channelName }, callback) => {
      call(base, 'POST', '/apps/app-id/auth', {
        bearer: 'app-secret',
        body: { socket_id: socketId, channel_name: channelName },
      }).then(
        (r) => {
          calls.push(r.status);
          if (r.status === 200) callback(null, r.json());
          else callback(new Error(`auth ${r.status}: ${r.text}`), null);
        },
        (err) => callback(err, null),
      );
    };
    const p = await connectedClient(server, { options: { channelAuthorization: { customHandler } } });
    await subscribed(p, name);
    assert.deepEqual(calls, [200]);

    // A channel outside the patterns: 403 with an explanation; pusher-js reports subscription_error.
    const denied = p.subscribe(`private-${uniq('secret-')}`);
    const err = await waitForEvent(denied, 'pusher:subscription_error', 5_000);
    assert.equal(err.type, 'AuthError');
    assert.deepEqual(calls, [200, 403]);
  });

  it('server-side auth is off by default (403 with an explanation)', { timeout: 20_000 }, async () => {
    const r = await call(base, 'POST', '/apps/locked/auth', {
      bearer: 'locked-secret',
      body: { socket_id: '1.2', channel_name: 'private-x' },
    });
    assert.equal(r.status, 403);
    assert.equal(r.json().code, 'server_auth_disabled');
    assert.match(r.json().error, /server_auth_channels/);
  });

  it('/health, /stats and /metrics answer without auth', { timeout: 20_000 }, async () => {
    const p = await connectedClient(server);
    await subscribed(p, uniq('public-'));
    let r = await call(base, 'GET', '/health');
    assert.deepEqual([r.status, r.json()], [200, { ok: true }]);
    r = await call(base, 'GET', '/stats');
    const stats = r.json();
    assert.ok(stats.connections >= 1, r.text);
    assert.ok(stats.channels >= 1, r.text);
    assert.deepEqual(stats.apps.map((a) => a.app_id), ['app-id', 'locked']);
    r = await call(base, 'GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/plain/);
    assert.match(r.text, /^ringcast_connections \d+$/m);
    assert.match(r.text, /^ringcast_rest_requests_total\{endpoint="events",status="200"\} \d+$/m);
    assert.match(r.text, /^ringcast_rest_requests_total\{endpoint="events",status="401"\} \d+$/m);
    assert.match(r.text, /^ringcast_app_connections\{app="app-id"\} \d+$/m);
  });
});

describe('--api-listen: the REST API on its own port', { timeout: 60_000 }, () => {
  let server;
  let apiBase;
  before(async () => {
    server = await startServer({ args: ['--api-listen', '127.0.0.1:0'] });
    const until = Date.now() + 5_000;
    let m;
    while (!(m = /HTTP API on (127\.0\.0\.1):(\d+)/.exec(server.logs())) && Date.now() < until) {
      await delay(20);
    }
    assert.ok(m, `no "HTTP API on" line in\n${server.logs()}`);
    apiBase = `http://${m[1]}:${m[2]}`;
    assert.notEqual(Number(m[2]), server.port);
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('publishing goes through the API port; the public port answers only /health', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, name)).channel, 'via-api');
    const apiPort = Number(new URL(apiBase).port);
    const sdk = serverSdk({ port: apiPort });
    assert.deepEqual(await (await sdk.trigger(name, 'via-api', { ok: 1 })).json(), {});
    assert.deepEqual((await got.next(5_000))[0], { ok: 1 });
    const publicBase = `http://${server.host}:${server.port}`;
    let r = await call(publicBase, 'GET', '/health');
    assert.deepEqual([r.status, r.json()], [200, { ok: true }]);
    const publicSdk = serverSdk(server);
    await assert.rejects(publicSdk.trigger(name, 'via-api', {}), (err) => {
      assert.equal(err.status, 404, err.body);
      assert.match(JSON.parse(err.body).error, /api_listen/);
      return true;
    });
    r = await call(publicBase, 'GET', '/metrics');
    assert.equal(r.status, 404);
    r = await call(apiBase, 'GET', '/metrics');
    assert.equal(r.status, 200);
    // SSE streams stay on the public port (the engine cores hold them); the API port says so.
    r = await call(apiBase, 'GET', `/apps/app-id/stream?channels=${name}`);
    assert.equal(r.status, 404);
    assert.equal(r.json().code, 'stream_on_public_port');
    const ctl = new AbortController();
    const stream = await fetch(`${publicBase}/apps/app-id/stream?channels=${name}`, { signal: ctl.signal });
    assert.equal(stream.status, 200);
    assert.match(stream.headers.get('content-type'), /^text\/event-stream/);
    ctl.abort();
    await delay(QUIET_MS / 2);
    assert.equal(got.count, 1);
  });
});
