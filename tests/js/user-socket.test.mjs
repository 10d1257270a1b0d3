// The alrt user socket: user tokens from POST /apps/{id}/users/{user_id}/token (fetch, Bearer
// app secret), the socket GET /ws?token= with the `ws` package: notifications for the user's
// server-to-user events (REST POST /apps/{id}/users/{user_id}/events and the `pusher` SDK's
// sendToUser, also reaching the user's pusher-js connection), ping/pong, other messages acked
// and forwarded to the app's webhooks as `client_message` (signed, checked with the SDK), close
// 4001 for invalid/expired tokens and 4000 when a newer socket of the user replaces it.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, PusherServer, serverSdk } from './lib/client.mjs';

const WAIT_MS = 5_000;
const SECRET = 'app-secret';

async function startReceiver() {
  const sdk = new PusherServer({ appId: 'app-id', key: 'app-key', secret: SECRET });
  const events = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const webhook = sdk.webhook({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
      if (webhook.isValid()) events.push(...webhook.getEvents());
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/hook`,
    async until(pred) {
      const deadline = Date.now() + 15_000;
      while (!pred(events)) {
        if (Date.now() > deadline) throw new Error(`webhooks never matched: ${JSON.stringify(events)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return events;
    },
    close: () => new Promise((r) => srv.close(r)),
  };
}

const config = (hook) => `[[apps]]
id = "app-id"
key = "app-key"
secret = "${SECRET}"
single_connection_per_user = true
[[apps.webhooks]]
url = "${hook}"
event_types = ["client_message"]

[[apps]]
id = "multi"
key = "multi-key"
secret = "multi-secret"
`;

async function call(base, method, path, { bearer, body } = {}) {
  const headers = {};
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  return { status: res.status, text, json: () => JSON.parse(text) };
}

/** A `ws` client on /ws?token= that queues parsed messages and reports its close. */
function userSocket(server, token) {
  const ws = new WebSocket(`ws://${server.host}:${server.port}/ws?token=${encodeURIComponent(token)}`);
  const queue = [];
  const waiters = [];
  ws.on('message', (d) => {
    queue.push(JSON.parse(d.toString()));
    while (waiters.length && queue.length) waiters.shift()(queue.shift());
  });
  ws.on('error', () => {});
  const closed = new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  const opened = new Promise((r) => ws.on('open', r));
  return {
    ws,
    closed,
    opened,
    send: (m) => ws.send(JSON.stringify(m)),
    next(ms = WAIT_MS) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve, reject) => {
        const w = (m) => {
          clearTimeout(t);
          resolve(m);
        };
        const t = setTimeout(() => {
          // A timed-out waiter must not swallow a later message.
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error('timed out waiting for a message'));
        }, ms);
        waiters.push(w);
      });
    },
  };
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

describe('alrt user socket', { timeout: 120_000 }, () => {
  let server;
  let base;
  let receiver;
  const sockets = [];
  before(async () => {
    receiver = await startReceiver();
    server = await startServer({ config: config(receiver.url), args: ['--workers', '2'] });
    base = `http://${server.host}:${server.port}`;
  });
  afterEach(() => {
    closeAllClients();
    for (const s of sockets.splice(0)) s.ws.terminate();
  });
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
    if (receiver) await receiver.close();
  });

  async function tokenFor(user, app = 'app-id', secret = SECRET, body) {
    const r = await call(base, 'POST', `/apps/${app}/users/${user}/token`, { bearer: secret, body });
    assert.equal(r.status, 200, r.text);
    return r.json();
  }

  /** Sends user events until the socket gets one (its silent subscription may still be in flight). */
  async function firstNotification(s, user, app = 'app-id', secret = SECRET) {
    for (let i = 0; i < 50; i++) {
      const r = await call(base, 'POST', `/apps/${app}/users/${user}/events`, { bearer: secret, body: { event: 'probe', data: { i } } });
      assert.equal(r.status, 200, r.text);
      const m = await s.next(200).catch(() => undefined);
      if (m) return m;
    }
    throw new Error('no notification reached the socket');
  }

  it('issues 24 h user tokens and delivers the user\'s events as notifications', { timeout: 30_000 }, async () => {
    const t = await tokenFor('dana', 'multi', 'multi-secret');
    assert.equal(t.expires_in, 86_400);
    const [, p, s] = t.token.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url'));
    assert.equal(claims.sub, 'dana');
    assert.equal(claims.exp - claims.iat, 86_400);
    assert.equal(createHmac('sha256', 'multi-secret').update(t.token.split('.').slice(0, 2).join('.')).digest('base64url'), s);

    const sock = userSocket(server, t.token);
    sockets.push(sock);
    const first = await firstNotification(sock, 'dana', 'multi', 'multi-secret');
    assert.equal(first.type, 'notification');
    assert.equal(first.event, 'probe');
    // A REST event with object data arrives as that object, and reports how many it reached.
    const r = await call(base, 'POST', '/apps/multi/users/dana/events', {
      bearer: 'multi-secret',
      body: { event: 'new-message', data: { from: 'eve', text: 'hi' } },
    });
    assert.deepEqual(r.json(), { ok: true, triggered: 1 });
    let m;
    do m = await sock.next();
    while (m.event === 'probe');
    assert.deepEqual(m, { type: 'notification', event: 'new-message', data: { from: 'eve', text: 'hi' } });

    // The SDK's sendToUser reaches the socket and the user's signed-in pusher-js connection.
    const p2 = await connectedClient(server, {
      key: 'multi-key',
      secret: 'multi-secret',
      appId: 'multi',
      options: { userAuthentication: { customHandler: ({ socketId }, cb) => cb(null, serverSdk(server, { appId: 'multi', key: 'multi-key', secret: 'multi-secret' }).authenticateUser(socketId, { id: 'dana' })) } },
    });
    p2.signin();
    const viaPusher = new Promise((resolve) => p2.user.bind('ping-all', resolve));
    const sdk = serverSdk(server, { appId: 'multi', key: 'multi-key', secret: 'multi-secret' });
    let got;
    for (let i = 0; i < 50 && !got; i++) {
      await sdk.sendToUser('dana', 'ping-all', { n: 1 });
      got = await withTimeout(viaPusher, 200, 'pusher-js').catch(() => undefined);
    }
    assert.deepEqual(got, { n: 1 });
    do m = await sock.next();
    while (m.event !== 'ping-all');
    assert.deepEqual(m.data, { n: 1 });
  });

  it('ping/pong, acks, and client messages forwarded to webhooks as client_message', { timeout: 30_000 }, async () => {
    const sock = userSocket(server, (await tokenFor('fred')).token);
    sockets.push(sock);
    await sock.opened;
    sock.send({ type: 'ping' });
    assert.deepEqual(await sock.next(), { type: 'pong' });
    sock.send({ type: 'mark_read', id: 'n-42', notification_id: 'abc' });
    assert.deepEqual(await sock.next(), { type: 'ack', ack: 'mark_read', id: 'n-42' });
    sock.send({ nope: 1 });
    assert.equal((await sock.next()).type, 'error');
    const events = await receiver.until((ev) => ev.some((e) => e.name === 'client_message' && e.user_id === 'fred'));
    const e = events.find((x) => x.name === 'client_message' && x.user_id === 'fred');
    assert.deepEqual(e.message, { type: 'mark_read', id: 'n-42', notification_id: 'abc' });
    assert.equal(e.channel, '#server-to-user-fred');
  });

  it('closes 4001 for invalid, expired and Pusher-access tokens', { timeout: 30_000 }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const sign = (claims, secret) => {
      const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
      return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
    };
    const claims = { sub: 'gil', app: 'app-id', iat: now - 10, scope: 'user' };
    for (const [what, token] of [
      ['expired', sign({ ...claims, exp: now - 1 }, SECRET)],
      ['forged', sign({ ...claims, exp: now + 600 }, 'wrong')],
      ['access token', sign({ ...claims, scope: 'access', exp: now + 600 }, SECRET)],
      ['garbage', 'x.y.z'],
    ]) {
      const s = userSocket(server, token);
      const c = await withTimeout(s.closed, WAIT_MS, what);
      assert.equal(c.code, 4001, `${what}: ${c.reason}`);
    }
  });

  it('a newer socket of the same user replaces the older one with 4000', { timeout: 30_000 }, async () => {
    const { token } = await tokenFor('hana');
    const old = userSocket(server, token);
    sockets.push(old);
    await firstNotification(old, 'hana');
    const fresh = userSocket(server, token);
    sockets.push(fresh);
    const c = await withTimeout(old.closed, WAIT_MS, 'old socket closed');
    assert.equal(c.code, 4000);
    const m = await firstNotification(fresh, 'hana');
    assert.equal(m.type, 'notification');
  });
});


