// A client process for tls.test.mjs. It is spawned with NODE_EXTRA_CA_CERTS naming the test's
// CA (Node reads that variable only at start-up), so pusher-js (forceTLS) and the `pusher`
// server SDK (useTLS) trust the server's certificate exactly as an app that installed the CA
// would, with no TLS option in their code.
//
// Protocol: one JSON request per stdin line, {id, op, ...}; one JSON reply per stdout line,
// {id, ok:true, result} or {id, ok:false, error}. Every wait is bounded.
//
//   connect   {port}                       -> {socketId}           pusher-js, forceTLS, wssPort
//   subscribe {client, channel}            -> {}                   (private-*: signed by the SDK)
//   next      {client, channel, event}     -> {data}               next event not yet consumed
//   trigger   {port, channel, event, data} -> {status}             pusher SDK, useTLS
//   serial    {port}                       -> {serial}             a fresh TLS handshake's leaf serial
//   close     {client}                     -> {}

import readline from 'node:readline';
import tls from 'node:tls';
import { PusherServer, createClient, record, subscribed, waitForState } from './client.mjs';
import { DEFAULT_APP } from './server.mjs';

const WAIT_MS = 8_000;
const clients = new Map();
let nextClient = 0;

function key(client, channel, event) {
  return `${client}\u0000${channel}\u0000${event}`;
}

const ops = {
  async connect({ port }) {
    const pusher = createClient(
      { port },
      { options: { forceTLS: true, wssPort: port, wsPort: port, enabledTransports: ['ws'] } },
    );
    await waitForState(pusher, 'connected', WAIT_MS);
    const id = String(nextClient++);
    clients.set(id, { pusher, recorders: new Map() });
    return { client: id, socketId: pusher.connection.socket_id };
  },
  async subscribe({ client, channel, events = [] }) {
    const c = clients.get(client);
    const { channel: ch } = await subscribed(c.pusher, channel, WAIT_MS);
    for (const e of events) c.recorders.set(key(client, channel, e), record(ch, e));
    return {};
  },
  async next({ client, channel, event }) {
    const r = clients.get(client).recorders.get(key(client, channel, event));
    const [data] = await r.next(WAIT_MS);
    return { data };
  },
  async trigger({ port, channel, event, data }) {
    const sdk = new PusherServer({ ...DEFAULT_APP, host: '127.0.0.1', port, useTLS: true, timeout: 5_000 });
    const res = await sdk.trigger(channel, event, data);
    return { status: res.status };
  },
  serial({ port }) {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ALPNProtocols: ['http/1.1'] }, () => {
        const cert = s.getPeerCertificate();
        const result = { serial: cert.serialNumber, alpn: s.alpnProtocol, protocol: s.getProtocol() };
        s.end();
        resolve(result);
      });
      s.setTimeout(WAIT_MS, () => {
        s.destroy();
        reject(new Error('TLS handshake timed out'));
      });
      s.on('error', reject);
    });
  },
  async close({ client }) {
    const c = clients.get(client);
    clients.delete(client);
    c.pusher.disconnect();
    return {};
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    return;
  }
  let reply;
  try {
    reply = { id: req.id, ok: true, result: await ops[req.op](req) };
  } catch (err) {
    reply = { id: req.id, ok: false, error: String(err && err.stack ? err.stack : err) };
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
});
rl.on('close', () => {
  for (const c of clients.values()) c.pusher.disconnect();
  process.exit(0);
});
