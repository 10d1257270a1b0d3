// Server-sent events (the AltoHost shape, engine/src/sse.rs): `GET /apps/{id}/stream?channels=`
// read by the `eventsource` npm package and by Chromium's own EventSource (playwright-core with
// Debian's chromium), with events published by the `pusher` server SDK. Covered: the wire form
// (`id:` = the channel's sequence number, `event:`, multi-line data split into `data:` lines),
// reconnecting with Last-Event-ID across a server-side close without a gap or a duplicate, the
// reset event when history no longer holds the id, the heartbeat comment, private channels
// refused without / accepted with a token, 4xx JSON for a bad app / channel / token, a slow
// reader closed under the outbound budget and counted, and the metrics.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EventSource } from 'eventsource';
import { chromium } from 'playwright-core';
import { appToml, startServer } from './lib/server.mjs';
import { serverSdk, uniq } from './lib/client.mjs';

const WAIT_MS = 10_000;
const LSK = 'lsk_sse_test';
const CHROMIUM = process.env.RINGCAST_CHROMIUM || '/usr/bin/chromium';

const CONFIG =
  'sse_heartbeat_secs = 1\n' +
  appToml({ id: 'app-id', key: 'app-key', secret: 'app-secret', history_size: 3, api_keys: [LSK] }) +
  appToml({ id: 'off', key: 'off-key', secret: 'off-secret', enabled: false });

/** Bounded wait for a condition (polled). */
async function waitFor(cond, what, ms = WAIT_MS) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function call(base, method, p, { body, headers = {} } = {}) {
  const h = { ...headers };
  let payload;
  if (body !== undefined) {
    payload = JSON.stringify(body);
    h['content-type'] = 'application/json';
  }
  const res = await fetch(`${base}${p}`, { method, headers: h, body: payload, signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

/**
 * An `eventsource` client that records every named event it is told to listen to, in order:
 * {type, id, data}. `lastEventId` (optional) is sent on the first request as a browser would
 * after a reload.
 */
function sseClient(url, types, { lastEventId, bearer } = {}) {
  const got = [];
  let opens = 0;
  const init = {
    fetch: (u, i) =>
      fetch(u, {
        ...i,
        headers: {
          ...i.headers,
          ...(lastEventId !== undefined && opens === 0 ? { 'Last-Event-ID': String(lastEventId) } : {}),
          ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
        },
      }),
  };
  const es = new EventSource(url, init);
  es.addEventListener('open', () => opens++);
  for (const t of types) es.addEventListener(t, (e) => got.push({ type: t, id: e.lastEventId, data: e.data }));
  return {
    es,
    got,
    opens: () => opens,
    of: (t) => got.filter((e) => e.type === t),
    close: () => es.close(),
  };
}

async function metric(base, name) {
  const r = await call(base, 'GET', '/metrics');
  const m = new RegExp(`^${name.replace(/[{}"]/g, (c) => `\\${c}`)} (\\d+)$`, 'm').exec(r.text);
  return m ? Number(m[1]) : undefined;
}

async function token(base, body) {
  const r = await call(base, 'POST', '/apps/token', { body: { api_key: LSK, ...body } });
  assert.equal(r.status, 200, r.text);
  return r.json().access_token;
}

describe('SSE streams: GET /apps/{id}/stream', { timeout: 180_000 }, () => {
  let server, base, sdk;
  const open = [];
  before(async () => {
    server = await startServer({ config: CONFIG, args: ['--workers', '2'] });
    base = `http://${server.host}:${server.port}`;
    sdk = serverSdk(server);
  });
  after(async () => {
    for (const c of open.splice(0)) c.close();
    if (server) await server.stop();
  });

  it('eventsource receives SDK events: id = sequence number, event name, multi-line data split', { timeout: 30_000 }, async () => {
    const ch = uniq('news-');
    const other = uniq('sports-');
    const c = sseClient(`${base}/apps/app-id/stream?channels=${ch}`, ['story', 'ringcast:subscribed']);
    const both = sseClient(`${base}/apps/app-id/stream?channels=${ch},${other}`, ['story', 'score', 'ringcast:subscribed']);
    open.push(c, both);
    await waitFor(() => c.of('ringcast:subscribed').length === 1, 'subscribed');
    await waitFor(() => both.of('ringcast:subscribed').length === 2, 'both subscribed');
    assert.deepEqual(JSON.parse(c.of('ringcast:subscribed')[0].data), { channel: ch, last_seq: 0 });
    assert.equal(c.of('ringcast:subscribed')[0].id, '0', 'a single-channel stream: the newest sequence number');
    await sdk.trigger(ch, 'story', 'line one\nline two\r\nline three');
    await sdk.trigger(ch, 'story', { n: 2 });
    await sdk.trigger(other, 'score', '3-1');
    await waitFor(() => c.of('story').length === 2, 'two stories');
    assert.deepEqual(
      c.of('story').map((e) => [e.id, e.data]),
      [
        ['1', 'line one\nline two\nline three'],
        ['2', '{"n":2}'],
      ],
    );
    await waitFor(() => both.of('story').length === 2 && both.of('score').length === 1, 'both channels');
    assert.equal(both.of('score')[0].data, '3-1');
    assert.equal(both.of('score')[0].id, '1', "the other channel's own sequence");
    // Counted while open, as connections too.
    assert.ok((await metric(base, 'ringcast_sse_streams')) >= 2);
    assert.ok((await metric(base, 'ringcast_sse_streams_opened_total')) >= 2);
  });

  it('the raw wire form: text/event-stream, retry, id/event/data lines, heartbeat comments', { timeout: 30_000 }, async () => {
    const ch = uniq('wire-');
    const ctl = new AbortController();
    const res = await fetch(`${base}/apps/app-id/stream?channels=${ch}`, { signal: ctl.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    const readUntil = async (re, what) => {
      const until = Date.now() + WAIT_MS;
      while (!re.test(text)) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${what} in ${JSON.stringify(text)}`);
        const { value, done } = await reader.read();
        if (done) throw new Error(`stream ended before ${what}`);
        text += dec.decode(value, { stream: true });
      }
    };
    await readUntil(/event: ringcast:subscribed\n/, 'subscribed');
    assert.ok(text.startsWith('retry: 1000\n\n'), text);
    await sdk.trigger(ch, 'multi', 'a\nb');
    await readUntil(/event: multi\n/, 'event');
    await readUntil(/: heartbeat\n\n/, 'heartbeat');
    assert.match(text, /id: 1\nevent: multi\ndata: a\ndata: b\n\n/);
    ctl.abort();
  });

  it('reconnects with Last-Event-ID across a server-side close and misses nothing (eventsource)', { timeout: 40_000 }, async () => {
    const ch = uniq('resume-');
    const t = await token(base, { socket_id: 'sse-user-1' });
    const c = sseClient(`${base}/apps/app-id/stream?channels=${ch}&token=${t}`, ['tick', 'ringcast:close', 'ringcast:subscribed', 'ringcast:reset']);
    open.push(c);
    await waitFor(() => c.of('ringcast:subscribed').length === 1, 'subscribed');
    await sdk.trigger(ch, 'tick', '1');
    await waitFor(() => c.of('tick').length === 1, 'first tick');
    // The server closes the stream (terminate the token's user: 4009, told as ringcast:close).
    assert.equal((await sdk.terminateUserConnections('sse-user-1')).status, 200);
    await waitFor(() => c.of('ringcast:close').length === 1, 'close event');
    assert.equal(JSON.parse(c.of('ringcast:close')[0].data).code, 4009);
    // Published while the client is away (it reconnects after retry: 1000 ms).
    await sdk.trigger(ch, 'tick', '2');
    await sdk.trigger(ch, 'tick', '3');
    await waitFor(() => c.opens() >= 2 && c.of('ringcast:subscribed').length === 2, 'reconnected');
    await sdk.trigger(ch, 'tick', '4');
    await waitFor(() => c.of('tick').length >= 4, 'all ticks');
    assert.deepEqual(
      c.of('tick').map((e) => [e.id, e.data]),
      [
        ['1', '1'],
        ['2', '2'],
        ['3', '3'],
        ['4', '4'],
      ],
      'in order, no gap, no duplicate',
    );
    assert.equal(c.of('ringcast:reset').length, 0);
    assert.ok((await metric(base, 'ringcast_connections_closed_total{reason="terminated"}')) >= 1);
  });

  it('a Last-Event-ID the history no longer holds gets ringcast:reset first, then the stream goes on', { timeout: 30_000 }, async () => {
    const ch = uniq('reset-');
    // With `info` the REST answer waits for the owner core, so the history holds the event
    // before the stream asks for it. History keeps 4..6.
    for (let i = 1; i <= 6; i++) await sdk.trigger(ch, 'e', String(i), { info: 'subscription_count' });
    // Still held: resumes exactly after 4.
    const held = sseClient(`${base}/apps/app-id/stream?channels=${ch}`, ['e', 'ringcast:reset', 'ringcast:subscribed'], { lastEventId: 4 });
    open.push(held);
    await waitFor(() => held.of('ringcast:subscribed').length === 1, 'subscribed (held)');
    assert.deepEqual(held.of('e').map((e) => e.id), ['5', '6']);
    assert.equal(held.of('ringcast:reset').length, 0);
    held.close();
    // Not held any more (1 was evicted): reset first, no replay.
    const gone = sseClient(`${base}/apps/app-id/stream?channels=${ch}`, ['e', 'ringcast:reset', 'ringcast:subscribed'], { lastEventId: 1 });
    open.push(gone);
    await waitFor(() => gone.of('ringcast:subscribed').length === 1, 'subscribed (gone)');
    assert.deepEqual(gone.got.map((e) => e.type), ['ringcast:reset', 'ringcast:subscribed']);
    const reset = JSON.parse(gone.of('ringcast:reset')[0].data);
    assert.equal(reset.channel, ch);
    assert.equal(reset.last_seq, 6);
    assert.equal(gone.of('ringcast:reset')[0].id, '6');
    await sdk.trigger(ch, 'e', '7');
    await waitFor(() => gone.of('e').length === 1, 'live after reset');
    assert.deepEqual([gone.of('e')[0].id, gone.of('e')[0].data], ['7', '7']);
  });

  it('private channels: refused without a token, with a token that does not allow them or lacks read; streamed with one that does', { timeout: 30_000 }, async () => {
    const ch = uniq('private-feed-');
    let r = await call(base, 'GET', `/apps/app-id/stream?channels=${ch}`);
    assert.equal(r.status, 401);
    assert.equal(r.json().code, 'token_required');
    const wrong = await token(base, { socket_id: 'u2', channels: ['private-other-*'] });
    r = await call(base, 'GET', `/apps/app-id/stream?channels=${ch}&token=${wrong}`);
    assert.equal(r.status, 403);
    assert.equal(r.json().code, 'channel_forbidden');
    const noRead = await token(base, { socket_id: 'u2', permissions: ['write'], channels: ['private-feed-*'] });
    r = await call(base, 'GET', `/apps/app-id/stream?channels=${ch}&token=${noRead}`);
    assert.equal(r.status, 403);
    assert.equal(r.json().code, 'permission_denied');
    r = await call(base, 'GET', `/apps/app-id/stream?channels=${ch}&token=not.a.token`);
    assert.equal(r.status, 401);
    assert.equal(r.json().code, 'invalid_token');
    const good = await token(base, { socket_id: 'u2', channels: ['private-feed-*'] });
    // As a query parameter (what a browser can do) and as a Bearer header.
    const q = sseClient(`${base}/apps/app-id/stream?channels=${ch}&token=${good}`, ['secret', 'ringcast:subscribed']);
    const h = sseClient(`${base}/apps/app-id/stream?channels=${ch}`, ['secret', 'ringcast:subscribed'], { bearer: good });
    open.push(q, h);
    await waitFor(() => q.of('ringcast:subscribed').length === 1 && h.of('ringcast:subscribed').length === 1, 'subscribed');
    await sdk.trigger(ch, 'secret', 's3');
    await waitFor(() => q.of('secret').length === 1 && h.of('secret').length === 1, 'private event');
    assert.equal(q.of('secret')[0].data, 's3');
  });

  it('bad requests get 4xx JSON', { timeout: 20_000 }, async () => {
    for (const [p, status, code] of [
      ['/apps/nope/stream?channels=a', 404, 'app_not_found'],
      ['/apps/off/stream?channels=a', 403, 'app_disabled'],
      ['/apps/app-id/stream', 400, 'invalid_channel'],
      ['/apps/app-id/stream?channels=bad%20name', 400, 'invalid_channel'],
      ['/apps/app-id/stream?channels=presence-room', 400, 'unsupported_channel'],
      ['/apps/app-id/stream?channels=private-encrypted-x', 400, 'unsupported_channel'],
      [`/apps/app-id/stream?channels=${Array.from({ length: 101 }, (_, i) => `c${i}`).join(',')}`, 400, 'too_many_channels'],
    ]) {
      const r = await call(base, 'GET', p);
      assert.equal(r.status, status, `${p}: ${r.text}`);
      assert.match(r.headers.get('content-type'), /application\/json/);
      assert.equal(r.json().code, code, p);
    }
    // The eventsource client gives up on a non-200 answer (no retry loop).
    const c = sseClient(`${base}/apps/nope/stream?channels=a`, []);
    const err = await new Promise((resolve) => c.es.addEventListener('error', resolve));
    assert.equal(err.code, 404);
    await waitFor(() => c.es.readyState === 2, 'closed');
  });
});

describe('SSE: a slow reader is closed under the outbound budget', { timeout: 120_000 }, () => {
  let server, base;
  before(async () => {
    server = await startServer({
      config: 'outbound_budget_bytes = 65536\n' + appToml({ id: 'app-id', key: 'app-key', secret: 'app-secret' }),
    });
    base = `http://${server.host}:${server.port}`;
  });
  after(async () => {
    if (server) await server.stop();
  });

  it('a stream that stops reading is cut and counted as slow_consumer_budget', { timeout: 90_000 }, async () => {
    const ch = uniq('flood-');
    const sock = net.connect(server.port, '127.0.0.1');
    let text = '';
    let ended = false;
    sock.on('data', (d) => (text += d.toString()));
    sock.on('close', () => (ended = true));
    sock.on('error', () => {});
    sock.write(`GET /apps/app-id/stream?channels=${ch} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
    await waitFor(() => text.includes('ringcast:subscribed'), 'subscribed');
    sock.pause(); // stops reading: the kernel buffers fill, then the server's queue
    const sdk = serverSdk(server);
    const big = 'x'.repeat(9_000);
    const before_ = (await metric(base, 'ringcast_connections_closed_total{reason="slow_consumer_budget"}')) ?? 0;
    let closed = false;
    // Batches of 45 KB, under the 64 KiB budget: a reading client keeps up with them, one
    // that does not read fills the socket buffers, then the budget.
    for (let i = 0; i < 1000 && !closed; i++) {
      await sdk.triggerBatch(Array.from({ length: 5 }, () => ({ channel: ch, name: 'big', data: big })));
      closed = ((await metric(base, 'ringcast_connections_closed_total{reason="slow_consumer_budget"}')) ?? 0) > before_;
    }
    assert.ok(closed, 'closed as a slow consumer');
    sock.resume();
    await waitFor(() => ended, 'the socket ends');
    assert.equal(await metric(base, 'ringcast_sse_streams'), 0);
  });
});

describe('SSE in Chromium (EventSource)', { timeout: 120_000 }, () => {
  let server, base, sdk, context, page, profile;
  before(async () => {
    server = await startServer({ config: CONFIG });
    base = `http://${server.host}:${server.port}`;
    sdk = serverSdk(server);
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    profile = mkdtempSync(path.join(tmpdir(), 'ringcast-sse-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
    // Same origin as the stream: a page of the server itself.
    await page.goto(`${base}/health`);
  });
  after(async () => {
    await context?.close();
    if (server) await server.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  it("the browser's EventSource gets events and resumes with Last-Event-ID after a server-side close", async () => {
    const ch = uniq('browser-');
    const t = await token(base, { socket_id: 'browser-user' });
    await page.evaluate(
      ({ url }) => {
        window.got = [];
        window.opens = 0;
        const es = new EventSource(url);
        window.es = es;
        es.onopen = () => window.opens++;
        for (const type of ['note', 'ringcast:subscribed', 'ringcast:close', 'ringcast:reset']) {
          es.addEventListener(type, (e) => window.got.push({ type, id: e.lastEventId, data: e.data }));
        }
      },
      { url: `/apps/app-id/stream?channels=${ch}&token=${t}` },
    );
    const count = (type) => page.evaluate((t_) => window.got.filter((e) => e.type === t_).length, type);
    await waitFor(async () => (await count('ringcast:subscribed')) === 1, 'subscribed');
    await sdk.trigger(ch, 'note', 'first\nsecond');
    await waitFor(async () => (await count('note')) === 1, 'first note');
    assert.equal((await sdk.terminateUserConnections('browser-user')).status, 200);
    await waitFor(async () => (await count('ringcast:close')) === 1, 'close');
    await sdk.trigger(ch, 'note', 'while away');
    await waitFor(async () => (await count('ringcast:subscribed')) === 2, 'resubscribed');
    await sdk.trigger(ch, 'note', 'after');
    await waitFor(async () => (await count('note')) === 3, 'all notes');
    const got = await page.evaluate(() => ({ got: window.got, opens: window.opens }));
    assert.ok(got.opens >= 2, 'reconnected');
    assert.deepEqual(
      got.got.filter((e) => e.type === 'note').map((e) => [e.id, e.data]),
      [
        ['1', 'first\nsecond'],
        ['2', 'while away'],
        ['3', 'after'],
      ],
    );
    assert.equal(await count('ringcast:reset'), 0);
    await page.evaluate(() => window.es.close());
  });
});
