// The LatteStream REST dialect (paths at the API root, `lsk_` API keys) called with fetch as
// LatteStream's own examples do, with stock pusher-js clients receiving; its access tokens
// used by a WebSocket client (the `ws` package) on /app/{key}?token= (valid, expired, forged,
// without `write`); every LatteStream error code; and the rate limits of every HTTP dialect
// (X-RateLimit-* headers, 429 + Retry-After + retry_after, the exact budget under concurrent
// clients on a two-worker server).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { appToml, startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, record, serverSdk, subscribed, uniq } from './lib/client.mjs';

const FETCH_TIMEOUT_MS = 5_000;
const WAIT_MS = 5_000;
const KEY = 'lsk_test_primary';
const SECRET = 'app-secret';

const CONFIG =
  appToml({
    id: 'app-id',
    key: 'app-key',
    secret: SECRET,
    client_events: true,
    api_keys: [KEY, 'lsk_test_second'],
    server_auth_channels: ['private-*', 'presence-*'],
  }) +
  // A small budget to reach 429 quickly, and a Pusher endpoint limited by config.
  appToml({ id: 'limited', key: 'limited-key', secret: 'limited-secret', api_keys: ['lsk_limited'] }) +
  '[apps.rate_limits]\nls_channels = { per_minute = 3, burst_per_sec = 3 }\nevents = { per_minute = 2, burst_per_sec = 2 }\n' +
  appToml({ id: 'off', key: 'off-key', secret: 'off-secret', enabled: false, api_keys: ['lsk_disabled'] });

/** fetch with a bounded wait; returns {status, headers, text, json()}. */
async function call(base, method, path, { bearer, body, headers = {} } = {}) {
  const h = { ...headers };
  if (bearer !== undefined) h.authorization = `Bearer ${bearer}`;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['content-type'] = 'application/json';
  }
  const res = await fetch(`${base}${path}`, { method, headers: h, body: payload, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 JWT made here, to forge or expire tokens the server must refuse. */
function jwt(claims, secret) {
  const input = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** A `ws` client on `path` that queues every text message (parsed) and reports the close. */
function wsClient(server, path) {
  const ws = new WebSocket(`ws://${server.host}:${server.port}${path}`);
  const queue = [];
  const waiters = [];
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    if (m.data && typeof m.data === 'string' && m.event !== undefined) {
      try {
        m.data = JSON.parse(m.data);
      } catch {
        // a plain string
      }
    }
    queue.push(m);
    while (waiters.length && queue.length) waiters.shift()(queue.shift());
  });
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => {});
  return {
    ws,
    closed,
    send: (m) => ws.send(JSON.stringify(m)),
    /** The next message whose event matches (others are skipped), bounded. */
    async next(event, ms = WAIT_MS) {
      const deadline = Date.now() + ms;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${event}`);
        const m = queue.length
          ? queue.shift()
          : await new Promise((resolve, reject) => {
              const w = (x) => {
                clearTimeout(t);
                resolve(x);
              };
              const t = setTimeout(() => {
                // A timed-out waiter must not swallow a later message.
                waiters.splice(waiters.indexOf(w), 1);
                reject(new Error(`timed out waiting for ${event}`));
              }, left);
              waiters.push(w);
            });
        if (m.event === event) return m;
      }
    },
    close: () => ws.close(),
  };
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

describe('LatteStream REST dialect, access tokens and rate limits', { timeout: 180_000 }, () => {
  let server;
  let base;
  const sockets = [];
  before(async () => {
    server = await startServer({ config: CONFIG, args: ['--workers', '2'] });
    base = `http://${server.host}:${server.port}`;
  });
  afterEach(() => {
    closeAllClients();
    for (const s of sockets.splice(0)) s.close();
  });
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('POST /events reaches pusher-js subscribers and counts exactly the connections reached', { timeout: 30_000 }, async () => {
    const a = uniq('news-');
    const b = uniq('sports-');
    const p1 = await connectedClient(server);
    const p2 = await connectedClient(server);
    const got1 = record((await subscribed(p1, a)).channel, 'update');
    await subscribed(p1, b);
    const got2 = record((await subscribed(p2, b)).channel, 'update');
    const r = await call(base, 'POST', '/events', {
      bearer: KEY,
      body: { channels: [a, b], event: 'update', data: { score: 3 } },
    });
    assert.equal(r.status, 200, r.text);
    // a: 1 connection, b: 2 connections.
    assert.deepEqual(r.json(), { channels: [a, b], event: 'update', triggered: 3 });
    assert.deepEqual((await got1.next(WAIT_MS))[0], { score: 3 });
    assert.deepEqual((await got2.next(WAIT_MS))[0], { score: 3 });
    // The key in the body works too (and a string data is delivered verbatim).
    const r2 = await call(base, 'POST', '/events', {
      body: { api_key: 'lsk_test_second', channels: [uniq('empty-')], event: 'x', data: 'plain' },
    });
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.json().triggered, 0);
  });

  it('POST /batch_events: unique increasing batch ids and exact totals', { timeout: 30_000 }, async () => {
    const ch = uniq('batch-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, ch)).channel, 'n');
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const r = await call(base, 'POST', '/batch_events', {
        bearer: KEY,
        body: {
          batch: [
            { channel: ch, name: 'n', data: { i, k: 0 } },
            { channel: ch, name: 'n', data: { i, k: 1 } },
            { channel: uniq('nobody-'), name: 'n', data: 'x' },
          ],
        },
      });
      assert.equal(r.status, 200, r.text);
      const v = r.json();
      assert.equal(v.total_events, 3);
      assert.equal(v.total_triggered, 2);
      ids.push(v.batch_id);
    }
    assert.ok(ids[0] < ids[1] && ids[1] < ids[2], `ids increase: ${ids}`);
    for (let i = 0; i < 3; i++) {
      for (let k = 0; k < 2; k++) assert.deepEqual((await got.next(WAIT_MS))[0], { i, k });
    }
  });

  it('GET /channels lists occupied channels with member counts and presence members', { timeout: 30_000 }, async () => {
    const pub = uniq('room-');
    const pres = uniq('presence-room-');
    const a = await connectedClient(server, { user: { user_id: 'ann', user_info: { name: 'Ann' } } });
    const b = await connectedClient(server, { user: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await subscribed(a, pub);
    await subscribed(b, pub);
    await subscribed(a, pres);
    await subscribed(b, pres);
    const r = await call(base, 'GET', `/channels?api_key=${KEY}`);
    assert.equal(r.status, 200, r.text);
    const v = r.json();
    const byName = Object.fromEntries(v.channels.map((c) => [c.channel, c]));
    assert.equal(v.total_channels, v.channels.length);
    assert.equal(byName[pub].member_count, 2);
    assert.equal(byName[pres].member_count, 2);
    const members = byName[pres].members.map((m) => [m.user_id, m.user_info]).sort();
    assert.deepEqual(members, [
      ['ann', { name: 'Ann' }],
      ['bob', { name: 'Bob' }],
    ]);
    assert.ok(!v.channels.some((c) => c.channel.startsWith('#')), 'no internal channels');
  });

  it('POST /auth signs private and presence subscriptions pusher-js accepts', { timeout: 30_000 }, async () => {
    const priv = uniq('private-desk-');
    const pres = uniq('presence-desk-');
    // pusher-js's auth goes through the LatteStream endpoint instead of the SDK signer.
    const sign = async ({ socketId, channelName }) => {
      const body = { socket_id: socketId, channel_name: channelName };
      if (channelName.startsWith('presence-')) Object.assign(body, { user_id: 'carol', user_info: { team: 'x' } });
      const r = await call(base, 'POST', '/auth', { bearer: KEY, body });
      assert.equal(r.status, 200, r.text);
      return r.json();
    };
    const p = await connectedClient(server, {
      options: {
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, cb) => sign({ socketId, channelName }).then((d) => cb(null, d), (e) => cb(e, null)),
        },
      },
    });
    await subscribed(p, priv);
    const { data } = await subscribed(p, pres);
    assert.equal(data.me.id, 'carol');
    assert.deepEqual(data.me.info, { team: 'x' });
  });

  it('every LatteStream error code, with its status and shape', { timeout: 30_000 }, async () => {
    const cases = [
      [{ body: { channels: ['a'], event: 'e', data: 'd' } }, 401, 'INVALID_API_KEY'],
      [{ bearer: 'lsk_nope_nope', body: { channels: ['a'], event: 'e', data: 'd' } }, 401, 'INVALID_API_KEY'],
      [{ bearer: 'lsk_disabled', body: { channels: ['a'], event: 'e', data: 'd' } }, 403, 'APP_DISABLED'],
      [{ bearer: KEY, body: { channels: ['bad channel!'], event: 'e', data: 'd' } }, 400, 'INVALID_CHANNEL'],
      [{ bearer: KEY, body: { channels: ['a'], event: 'e'.repeat(201), data: 'd' } }, 400, 'INVALID_EVENT'],
      [{ bearer: KEY, body: { channels: ['a'], event: 'e', data: 5 } }, 400, 'INVALID_EVENT'],
      [{ bearer: KEY, body: { channels: ['a'], event: 'e', data: 'x'.repeat(32 * 1024 + 1) } }, 413, 'PAYLOAD_TOO_LARGE'],
      [{ bearer: KEY, body: { channels: Array.from({ length: 11 }, (_, i) => `c${i}`), event: 'e', data: 'd' } }, 400, 'TOO_MANY_CHANNELS'],
    ];
    for (const [opts, status, code] of cases) {
      const r = await call(base, 'POST', '/events', opts);
      assert.equal(r.status, status, `${code}: ${r.text}`);
      const v = r.json();
      assert.equal(v.code, code, r.text);
      assert.equal(typeof v.error, 'string');
    }
    // Exactly 32 KB passes.
    const ok = await call(base, 'POST', '/events', { bearer: KEY, body: { channels: ['a'], event: 'e', data: 'x'.repeat(32 * 1024) } });
    assert.equal(ok.status, 200, ok.text);
    const batch = Array.from({ length: 11 }, () => ({ channel: 'a', name: 'e', data: 'd' }));
    let r = await call(base, 'POST', '/batch_events', { bearer: KEY, body: { batch } });
    assert.equal(r.status, 400);
    assert.equal(r.json().code, 'TOO_MANY_EVENTS');
    assert.deepEqual(r.json().details, { count: 11, max: 10 });
    r = await call(base, 'POST', '/apps/token', { body: { api_key: KEY, socket_id: 'u1', expires_in: 86_401 } });
    assert.equal(r.status, 400, r.text);
    r = await call(base, 'GET', '/channels/nope', { bearer: KEY });
    assert.equal(r.status, 404);
  });

  it('rate limits: headers on every limited answer, 429 with Retry-After and retry_after', { timeout: 30_000 }, async () => {
    // LatteStream default on /events: 1,000/min, 100/s.
    let r = await call(base, 'POST', '/events', { bearer: KEY, body: { channels: ['a'], event: 'e', data: 'd' } });
    assert.equal(r.headers.get('x-ratelimit-limit'), '1000');
    assert.ok(Number(r.headers.get('x-ratelimit-remaining')) < 100);
    const reset = Number(r.headers.get('x-ratelimit-reset'));
    assert.ok(reset >= Math.floor(Date.now() / 1000) - 1 && reset <= Date.now() / 1000 + 61, `reset ${reset}`);
    // The Pusher API is not limited unless configured...
    const sdk = serverSdk(server);
    const pr = await sdk.trigger('a', 'e', 'd');
    assert.equal(pr.status, 200);
    assert.equal(pr.headers.get('x-ratelimit-limit'), null);
    // ...and is when it is (app "limited": events 2/min).
    const limited = serverSdk(server, { appId: 'limited', key: 'limited-key', secret: 'limited-secret' });
    for (const left of ['1', '0']) {
      const ok = await limited.trigger('a', 'e', 'd');
      assert.equal(ok.headers.get('x-ratelimit-remaining'), left);
    }
    await assert.rejects(limited.trigger('a', 'e', 'd'), (e) => {
      assert.equal(e.status, 429);
      const v = JSON.parse(e.body);
      assert.equal(v.code, 'rate_limited');
      assert.ok(v.retry_after >= 1);
      return true;
    });
    // LatteStream /channels on "limited": 3/min.
    for (let i = 0; i < 3; i++) assert.equal((await call(base, 'GET', '/channels', { bearer: 'lsk_limited' })).status, 200);
    r = await call(base, 'GET', '/channels', { bearer: 'lsk_limited' });
    assert.equal(r.status, 429);
    const v = r.json();
    assert.equal(v.code, 'RATE_LIMIT_EXCEEDED');
    assert.ok(v.retry_after >= 1 && v.retry_after <= 60, r.text);
    assert.equal(r.headers.get('retry-after'), String(v.retry_after));
    assert.equal(r.headers.get('x-ratelimit-remaining'), '0');
    assert.equal(r.headers.get('x-ratelimit-limit'), '3');
  });

  it('the budget holds exactly under concurrent clients on a two-worker server', { timeout: 60_000 }, async () => {
    // Token issuing: 2,000/min, 200/s. 600 requests from 60 concurrent connections.
    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: 60 }, async () => {
        const codes = [];
        for (let i = 0; i < 10; i++) {
          const r = await call(base, 'POST', '/apps/token', { body: { api_key: 'lsk_test_second', socket_id: 'u' } });
          codes.push(r.status);
        }
        return codes;
      }),
    );
    const elapsedS = (Date.now() - t0) / 1000;
    const codes = results.flat();
    const ok = codes.filter((c) => c === 200).length;
    const limited = codes.filter((c) => c === 429).length;
    assert.equal(ok + limited, 600, `only 200/429: ${[...new Set(codes)]}`);
    // The burst bucket admits 200 at once plus 200 per second elapsed, never more; the minute
    // bucket (2,000) is not reached. Exact accounting, whatever the speed of the machine:
    assert.ok(ok >= 200, `at least the burst passes: ${ok}`);
    assert.ok(ok <= 200 + Math.ceil(elapsedS * 200), `${ok} passed in ${elapsedS}s`);
  });

  it('POST /apps/token issues an HS256 token that signs a WebSocket in on /app/{key}?token=', { timeout: 30_000 }, async () => {
    const r = await call(base, 'POST', '/apps/token', {
      body: { api_key: KEY, socket_id: 'user-7', permissions: ['read', 'write'], expires_in: 600 },
    });
    assert.equal(r.status, 200, r.text);
    const t = r.json();
    assert.equal(t.token_type, 'Bearer');
    assert.equal(t.expires_in, 600);
    assert.equal(t.tenant_id, 'app-id');
    const [h, p, s] = t.access_token.split('.');
    assert.deepEqual(JSON.parse(Buffer.from(h, 'base64url')), { alg: 'HS256', typ: 'JWT' });
    const claims = JSON.parse(Buffer.from(p, 'base64url'));
    assert.equal(claims.sub, 'user-7');
    assert.equal(claims.exp - claims.iat, 600);
    assert.equal(createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url'), s, 'signed with the app secret');

    const c = wsClient(server, `/app/app-key?protocol=7&token=${t.access_token}`);
    sockets.push(c);
    const est = await c.next('pusher:connection_established');
    const signin = await c.next('pusher:signin_success');
    assert.equal(JSON.parse(signin.data.user_data).id, 'user-7');
    // Server-to-user events reach it (the SDK's sendToUser), as after pusher:signin. The
    // silent #server-to-user- subscription may still be on its way to the owner: retry, bounded.
    let delivered;
    for (let i = 0; i < 50 && !delivered; i++) {
      await serverSdk(server).sendToUser('user-7', 'hello', { n: i });
      delivered = await c.next('hello', 200).catch(() => undefined);
    }
    assert.ok(delivered, 'server-to-user event delivered');
    assert.equal(delivered.channel, '#server-to-user-user-7');

    // With `write`, its client events reach the other subscriber of a private channel.
    const ch = uniq('private-chat-');
    const other = await connectedClient(server);
    const got = record((await subscribed(other, ch)).channel, 'client-typing');
    await tokenSubscribe(c, server, est.data.socket_id, ch);
    c.send({ event: 'client-typing', channel: ch, data: { who: 'user-7' } });
    assert.deepEqual((await got.next(WAIT_MS))[0], { who: 'user-7' });
  });

  it('a token without write may not send client events', { timeout: 30_000 }, async () => {
    const r = await call(base, 'POST', '/apps/token', { body: { api_key: KEY, socket_id: 'reader' } });
    assert.equal(r.status, 200, r.text);
    const c = wsClient(server, `/app/app-key?protocol=7&token=${r.json().access_token}`);
    sockets.push(c);
    const est = await c.next('pusher:connection_established');
    await c.next('pusher:signin_success');
    const ch = uniq('private-chat-');
    await tokenSubscribe(c, server, est.data.socket_id, ch);
    c.send({ event: 'client-typing', channel: ch, data: {} });
    const err = await c.next('pusher:error');
    assert.match(err.data.message, /write permission/);
  });

  it('a token without read may not subscribe; one without presence may not join presence channels', { timeout: 30_000 }, async () => {
    // Without `read`: every subscription is refused (403), the connection stays open.
    let r = await call(base, 'POST', '/apps/token', { body: { api_key: KEY, socket_id: 'writer', permissions: ['write'] } });
    assert.equal(r.status, 200, r.text);
    const w = wsClient(server, `/app/app-key?protocol=7&token=${r.json().access_token}`);
    sockets.push(w);
    await w.next('pusher:connection_established');
    await w.next('pusher:signin_success');
    const pub = uniq('public-');
    w.send({ event: 'pusher:subscribe', data: { channel: pub } });
    let err = await w.next('pusher:subscription_error');
    assert.equal(err.channel, pub);
    assert.equal(err.data.status, 403);
    assert.match(err.data.error, /read permission/);
    // With `read` but not `presence`: public and private subscribe, presence is refused (403).
    r = await call(base, 'POST', '/apps/token', { body: { api_key: KEY, socket_id: 'watcher', permissions: ['read'] } });
    const c = wsClient(server, `/app/app-key?protocol=7&token=${r.json().access_token}`);
    sockets.push(c);
    const est = await c.next('pusher:connection_established');
    await c.next('pusher:signin_success');
    c.send({ event: 'pusher:subscribe', data: { channel: pub } });
    assert.equal((await c.next('pusher_internal:subscription_succeeded')).channel, pub);
    const room = uniq('presence-room-');
    const channelData = JSON.stringify({ user_id: 'watcher' });
    const { auth } = serverSdk(server).authorizeChannel(est.data.socket_id, room, JSON.parse(channelData));
    c.send({ event: 'pusher:subscribe', data: { channel: room, auth, channel_data: channelData } });
    err = await c.next('pusher:subscription_error');
    assert.equal(err.channel, room);
    assert.equal(err.data.status, 403);
    assert.match(err.data.error, /presence permission/);
    // With `presence` the same signed subscription is accepted.
    r = await call(base, 'POST', '/apps/token', { body: { api_key: KEY, socket_id: 'member', permissions: ['read', 'presence'] } });
    const p = wsClient(server, `/app/app-key?protocol=7&token=${r.json().access_token}`);
    sockets.push(p);
    const est2 = await p.next('pusher:connection_established');
    await p.next('pusher:signin_success');
    const cd2 = JSON.stringify({ user_id: 'member' });
    const signed = serverSdk(server).authorizeChannel(est2.data.socket_id, room, JSON.parse(cd2));
    p.send({ event: 'pusher:subscribe', data: { channel: room, auth: signed.auth, channel_data: cd2 } });
    assert.equal((await p.next('pusher_internal:subscription_succeeded')).channel, room);
  });

  it('refuses expired, forged and foreign tokens with close 4009', { timeout: 30_000 }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const base_ = { sub: 'u9', app: 'app-id', iat: now - 100, scope: 'access', permissions: ['read'] };
    for (const [what, token] of [
      ['expired', jwt({ ...base_, exp: now - 1 }, SECRET)],
      ['forged', jwt({ ...base_, exp: now + 600 }, 'not-the-secret')],
      ['other app', jwt({ ...base_, app: 'limited', exp: now + 600 }, SECRET)],
      ['garbage', 'abc.def.ghi'],
    ]) {
      const c = wsClient(server, `/app/app-key?protocol=7&token=${token}`);
      const err = await c.next('pusher:error');
      assert.equal(err.data.code, 4009, what);
      const closed = await withTimeout(c.closed, WAIT_MS, `close (${what})`);
      assert.equal(closed.code, 4009, what);
    }
  });
});

/** Subscribes a raw `ws` client to a private channel, signed by the server SDK. */
async function tokenSubscribe(c, server, socketId, channel) {
  const { auth } = serverSdk(server).authorizeChannel(socketId, channel);
  c.send({ event: 'pusher:subscribe', data: { channel, auth } });
  const ok = await c.next('pusher_internal:subscription_succeeded');
  assert.equal(ok.channel, channel);
}
