// Webhooks verified by the `pusher` Node SDK, caused by real pusher-js clients.
// Needs: the ringcast binary wired with webhooks ([[apps.webhooks]] in --config).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { DEFAULT_APP, startServer } from './lib/server.mjs';
import { closeAllClients, closeClient, connectedClient, PusherServer, serverSdk, subscribed, uniq, waitForEvent } from './lib/client.mjs';

/** A webhook receiver that validates every request with pusher.webhook(...).isValid(). */
async function startReceiver({ failFirst = 0 } = {}) {
  const sdk = new PusherServer({ appId: DEFAULT_APP.appId, key: DEFAULT_APP.key, secret: DEFAULT_APP.secret });
  const requests = [];
  const events = [];
  const waiters = [];
  let n = 0;
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      n += 1;
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const webhook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = webhook.isValid();
      requests.push({ headers: req.headers, rawBody, valid });
      if (n <= failFirst) {
        res.writeHead(500).end();
        return;
      }
      if (valid) events.push(...webhook.getEvents());
      res.writeHead(200).end();
      for (const w of waiters.splice(0)) w();
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/hook`,
    requests,
    events,
    /** Wait (bounded) until pred(events) holds. */
    async until(pred, timeoutMs = 15_000) {
      const t0 = Date.now();
      while (!pred(events)) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`webhooks never matched: ${JSON.stringify(events)}`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
      return events;
    },
    close: () => new Promise((r) => srv.close(r)),
  };
}

function config(url, extra = '') {
  return `[[apps]]
id = "${DEFAULT_APP.appId}"
key = "${DEFAULT_APP.key}"
secret = "${DEFAULT_APP.secret}"
client_events = true
subscription_count = true
${extra}
[[apps.webhooks]]
url = "${url}"
`;
}

describe('webhooks', { timeout: 120_000 }, () => {
  let server;
  let receiver;
  before(async () => {
    receiver = await startReceiver();
    server = await startServer({ config: config(receiver.url) });
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
    if (receiver) await receiver.close();
  });

  it('every event type arrives, and every request passes pusher.webhook().isValid()', async () => {
    const presence = uniq('presence-room');
    const cache = uniq('cache-feed');
    const a = await connectedClient(server, { user: { user_id: 'alice', user_info: { n: 1 } } });
    const b = await connectedClient(server, { user: { user_id: 'bob' } });
    const chA = (await subscribed(a, presence)).channel;
    const chB = (await subscribed(b, presence)).channel;
    const got = waitForEvent(chB, 'client-wave');
    chA.trigger('client-wave', { hi: true });
    await got;
    const cacheCh = a.subscribe(cache);
    await waitForEvent(cacheCh, 'pusher:cache_miss');
    closeClient(b);
    const has = (name, pred = () => true) => (evs) => evs.some((e) => e.name === name && pred(e));
    const evs = await receiver.until((e) =>
      ['channel_occupied', 'member_added', 'client_event', 'cache_miss', 'subscription_count'].every((n) => has(n)(e)) &&
      has('member_removed', (x) => x.user_id === 'bob')(e) &&
      has('channel_vacated', (x) => x.channel === cache)(e) === false,
    );
    assert.ok(receiver.requests.length > 0);
    for (const r of receiver.requests) {
      assert.equal(r.valid, true, `invalid webhook: ${JSON.stringify(r.headers)} ${r.rawBody}`);
      assert.equal(r.headers['content-type'], 'application/json');
      assert.match(r.headers['x-ringcast-delivery'], /\S/);
      assert.equal(r.headers['x-ringcast-attempt'], '1');
    }
    const added = evs.filter((e) => e.name === 'member_added' && e.channel === presence).map((e) => e.user_id).sort();
    assert.deepEqual(added, ['alice', 'bob']);
    const ce = evs.find((e) => e.name === 'client_event' && e.channel === presence);
    assert.equal(ce.event, 'client-wave');
    assert.equal(ce.user_id, 'alice');
    assert.deepEqual(JSON.parse(ce.data), { hi: true });
    assert.match(ce.socket_id, /^\d+\.\d+$/);
    assert.ok(evs.some((e) => e.name === 'cache_miss' && e.channel === cache));
    closeClient(a);
    await receiver.until((e) => e.some((x) => x.name === 'channel_vacated' && x.channel === presence));
    // The delivery log over the signed HTTP API.
    const res = await serverSdk(server).get({ path: '/webhooks' });
    assert.equal(res.status, 200);
    const { deliveries } = await res.json();
    assert.ok(deliveries.length >= receiver.requests.length - 1);
    assert.ok(deliveries.some((d) => d.status === 'delivered' && d.attempts === 1 && d.url === receiver.url));
  });
});

describe('webhook retries', { timeout: 120_000 }, () => {
  it('a receiver failing twice gets the third attempt with the same delivery id', async () => {
    const receiver = await startReceiver({ failFirst: 2 });
    const server = await startServer({ config: config(receiver.url) });
    try {
      const a = await connectedClient(server);
      await subscribed(a, uniq('retry'));
      await receiver.until((e) => e.some((x) => x.name === 'channel_occupied'), 30_000);
      const first = receiver.requests.slice(0, 3);
      assert.deepEqual(first.map((r) => r.headers['x-ringcast-attempt']), ['1', '2', '3']);
      assert.equal(new Set(first.map((r) => r.headers['x-ringcast-delivery'])).size, 1);
      assert.ok(first.every((r) => r.valid));
    } finally {
      closeAllClients();
      await server.stop();
      await receiver.close();
    }
  });
});
