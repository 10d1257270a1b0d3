// Public and private channel subscription through pusher-js, with channel authorization
// signed by the `pusher` server SDK (authorizeChannel). Needs: WebSocket endpoint only.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  closeAllClients,
  connectedClient,
  delay,
  errorCode,
  record,
  serverSdk,
  subscribed,
  uniq,
  waitForEvent,
} from './lib/client.mjs';

/** How long we wait to be sure something that must NOT happen does not happen. */
const QUIET_MS = 1_000;

describe('subscriptions', { timeout: 90_000 }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('public channel: pusher:subscription_succeeded fires', { timeout: 15_000 }, async () => {
    const pusher = await connectedClient(server);
    const name = uniq('public-');
    const raw = record(pusher.connection, 'message');
    const { channel, data } = await subscribed(pusher, name);
    assert.equal(channel.subscribed, true);
    // pusher-js decodes the documented "{}" string to {}.
    assert.deepEqual(data, {});
    const frame = raw.events.map(([m]) => m).find((m) => m.event === 'pusher_internal:subscription_succeeded');
    assert.equal(frame.channel, name);
    raw.stop();
  });

  it('private channel: authorizeChannel signature -> subscription succeeds', { timeout: 15_000 }, async () => {
    const pusher = await connectedClient(server);
    const name = uniq('private-');
    const errors = record(pusher.connection, 'error');
    const { channel } = await subscribed(pusher, name);
    assert.equal(channel.subscribed, true);
    assert.equal(pusher.authCalls.length, 1);
    assert.equal(pusher.authCalls[0].socketId, pusher.connection.socket_id);
    assert.match(pusher.authCalls[0].auth.auth, /^app-key:[0-9a-f]{64}$/);
    assert.equal(errors.count, 0, `unexpected errors: ${JSON.stringify(errors.events)}`);
    errors.stop();
  });

  it('private channel: auth that also signs channel_data (Node SDK form) is accepted', { timeout: 15_000 }, async () => {
    // The Node SDK signs "<socket_id>:<channel>:<channel_data>" whenever data is given, also for
    // private channels, and pusher-js then sends channel_data. The server must accept that form too.
    const pusher = await connectedClient(server, {
      sign: ({ signer, socketId, channelName }) =>
        signer.authorizeChannel(socketId, channelName, { user_id: 'u-1', user_info: {} }),
    });
    const { channel } = await subscribed(pusher, uniq('private-'));
    assert.equal(channel.subscribed, true);
    assert.ok(pusher.authCalls[0].auth.channel_data, 'sanity: auth carried channel_data');
  });

  it('private channel: wrong-secret signature -> pusher:error, no subscription, connection stays up', { timeout: 20_000 }, async () => {
    const bad = await connectedClient(server, { secret: 'not-the-app-secret' });
    const socketId = bad.connection.socket_id;
    const name = uniq('private-');

    const connErrors = record(bad.connection, 'error'); // pusher-js: pusher:error -> connection 'error'
    const globalErrors = record(bad, 'pusher:error'); // ...and the raw event on the global emitter
    const states = record(bad.connection, 'state_change');
    const channel = bad.subscribe(name);
    const succeeded = record(channel, 'pusher:subscription_succeeded');
    const subErrors = record(channel, 'pusher:subscription_error');

    const [err] = await connErrors.next(5_000);
    assert.equal(err.type, 'PusherError', `connection error: ${JSON.stringify(err)}`);
    assert.equal(typeof err.data.message, 'string');
    assert.ok(err.data.message.length > 0);
    const code = errorCode(err);
    assert.ok(code === null || Number.isInteger(code), `pusher:error code must be null or an integer, got ${JSON.stringify(code)}`);
    assert.equal(globalErrors.count, 1, 'pusher:error frame seen on the global emitter');

    await delay(QUIET_MS);
    assert.equal(succeeded.count, 0, 'subscription must not succeed with a wrong signature');
    assert.equal(channel.subscribed, false);
    // Optional server extra (soketi style): pusher:subscription_error on the channel. If sent, it must name this channel.
    for (const [e] of subErrors.events) assert.equal(typeof e, 'object', JSON.stringify(e));

    // Still the same open connection: no close, no reconnect, and it still works.
    assert.equal(bad.connection.state, 'connected');
    assert.equal(bad.connection.socket_id, socketId);
    assert.equal(states.count, 0, `state changes: ${JSON.stringify(states.events)}`);
    const { channel: pub } = await subscribed(bad, uniq('public-'));
    assert.equal(pub.subscribed, true);
    assert.equal(connErrors.count, 1, `exactly one error expected, got ${JSON.stringify(connErrors.events)}`);
  });

  it('private channel: a signature for another socket_id is rejected', { timeout: 20_000 }, async () => {
    const pusher = await connectedClient(server, {
      sign: ({ signer, channelName }) => signer.authorizeChannel('1234.5678', channelName),
    });
    const name = uniq('private-');
    const channel = pusher.subscribe(name);
    const succeeded = record(channel, 'pusher:subscription_succeeded');
    const err = await waitForEvent(pusher.connection, 'error', 5_000);
    assert.equal(err.type, 'PusherError', JSON.stringify(err));
    await delay(QUIET_MS);
    assert.equal(succeeded.count, 0);
    assert.equal(pusher.connection.state, 'connected');
  });

  it('private channel: auth signed with a different app key is rejected', { timeout: 20_000 }, async () => {
    // right secret, wrong key prefix: "other-key:<hmac valid for app-secret>"
    const otherKey = serverSdk(server, { key: 'other-key' });
    const pusher = await connectedClient(server, {
      sign: ({ socketId, channelName }) => otherKey.authorizeChannel(socketId, channelName),
    });
    const channel = pusher.subscribe(uniq('private-'));
    const succeeded = record(channel, 'pusher:subscription_succeeded');
    const err = await waitForEvent(pusher.connection, 'error', 5_000);
    assert.equal(err.type, 'PusherError', JSON.stringify(err));
    assert.match(pusher.authCalls[0].auth.auth, /^other-key:[0-9a-f]{64}$/);
    await delay(QUIET_MS);
    assert.equal(succeeded.count, 0);
    assert.equal(pusher.connection.state, 'connected');
  });

  it('subscribing to the same public channel from many clients: each gets subscription_succeeded', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await connectedClient(server));
    const results = await Promise.all(clients.map((c) => subscribed(c, name)));
    for (const r of results) assert.equal(r.channel.subscribed, true);
  });
});
