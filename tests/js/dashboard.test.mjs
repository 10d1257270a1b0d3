// The dashboard in a real headless browser: Debian's chromium driven by playwright-core
// (no browser download; a fresh user-data-dir; no network but 127.0.0.1). Signs in with the
// admin token the server printed, sees a pusher-js connection and its channel appear,
// triggers from the debug console and sees the event arrive on the console's live
// subscription, and redelivers a failed webhook. Screenshots go to <target>/dashboard/.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { appToml, REPO_ROOT, startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, subscribed } from './lib/client.mjs';

const CHROMIUM = process.env.RINGCAST_CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = 15_000;
const SHOTS = path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR || 'target', 'dashboard');
const APP = { appId: '1', key: 'dash-key', secret: 'dash-secret' };

/** A webhook receiver that fails (500) until `accept` is set, and records what it got. */
async function receiver() {
  const got = [];
  const state = { accept: false };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      got.push({ accepted: state.accept, body, signature: req.headers['x-pusher-signature'] });
      res.statusCode = state.accept ? 200 : 500;
      res.end();
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { srv, got, state, url: `http://127.0.0.1:${srv.address().port}/hook` };
}

describe('dashboard (headless chromium)', { timeout: 120_000 }, () => {
  let server, hooks, context, page, dataDir, profile;

  before(async () => {
    hooks = await receiver();
    dataDir = mkdtempSync(path.join(tmpdir(), 'ringcast-dash-data-'));
    profile = mkdtempSync(path.join(tmpdir(), 'ringcast-dash-chromium-'));
    const config =
      appToml({ id: APP.appId, key: APP.key, secret: APP.secret, client_events: true, webhook_retry_budget_secs: 1, activity_history_size: 42 }) +
      `[[apps.webhooks]]\nurl = ${JSON.stringify(hooks.url)}\nevent_types = ["channel_occupied"]\nchannel_prefix = "dash-live"\n`;
    server = await startServer({ config, args: ['--data-dir', dataDir] });
    mkdirSync(SHOTS, { recursive: true });
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
  });

  after(async () => {
    closeAllClients();
    await context?.close();
    await server?.stop();
    hooks?.srv.close();
    for (const d of [dataDir, profile]) if (d) rmSync(d, { recursive: true, force: true });
  });

  it('signs in, shows a pusher-js connection, triggers from the console, redelivers a failed webhook', async () => {
    // Printed once, right after the listening line.
    let token;
    for (let i = 0; i < 500 && !token; i++) {
      token = /admin API token[^:]*: (rc_[0-9a-f]{64})/.exec(server.logs())?.[1];
      if (!token) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(token, server.logs());
    // Only 127.0.0.1 is ever requested by the page.
    const foreign = [];
    page.on('request', (r) => {
      if (!new URL(r.url()).hostname.startsWith('127.0.0.1')) foreign.push(r.url());
    });

    await page.goto(`http://127.0.0.1:${server.port}/dashboard`);
    await page.fill('#token', 'rc_wrong');
    await page.click('#signin-button');
    await page.locator('#signin-error').filter({ hasText: /token/i }).waitFor();
    await page.fill('#token', token);
    await page.click('#signin-button');
    await page.locator(`#app-list li[data-app="${APP.appId}"]`).waitFor();
    // Every per-app setting is shown, with its value.
    await page.locator('#settings tr[data-setting="activity_history_size"]').filter({ hasText: '42' }).waitFor();
    await page.locator('#settings tr[data-setting="allowed_origins"]').waitFor();
    await page.screenshot({ path: path.join(SHOTS, '1-signed-in.png'), fullPage: true });

    // A pusher-js client connects and subscribes: the channel and the connection appear.
    const client = await connectedClient(server, APP);
    await subscribed(client, 'dash-live-room');
    await page.locator('#channels tr[data-channel="dash-live-room"]').waitFor();
    await page.waitForFunction(
      () => Number(document.querySelector('#app-list li[data-app="1"] .app-connections')?.textContent) >= 2,
    ); // pusher-js + the console's own live subscription
    // Today's usage row counts the connections (peak sampled each second).
    await page.waitForFunction(
      () => Number(document.querySelector('#usage tr[data-day] td:nth-child(2)')?.textContent) >= 1,
    );
    await page.screenshot({ path: path.join(SHOTS, '2-connection.png'), fullPage: true });

    // Debug console: trigger, and see it arrive on the console's live subscription.
    await page.locator('#console-log[data-listening="debug-console"]').waitFor();
    await page.fill('#dbg-event', 'console-test');
    await page.fill('#dbg-data', '{"from":"chromium"}');
    await page.click('#dbg-trigger');
    await page
      .locator('#console-log .received')
      .filter({ hasText: 'console-test on debug-console: {"from":"chromium"}' })
      .waitFor();
    await page.screenshot({ path: path.join(SHOTS, '3-console.png'), fullPage: true });

    // The channel_occupied webhook of dash-live-room failed (500, budget 1 s): redeliver it.
    const failed = page.locator('#webhooks tr[data-delivery]').filter({ hasText: 'failed' }).first();
    await failed.waitFor();
    const id = await failed.getAttribute('data-delivery');
    await page.screenshot({ path: path.join(SHOTS, '4-webhook-failed.png'), fullPage: true });
    hooks.state.accept = true;
    await failed.locator('button.redeliver').click();
    await page.locator(`#webhooks tr[data-delivery="${id}"] td.delivered`).waitFor();
    await page.screenshot({ path: path.join(SHOTS, '5-webhook-redelivered.png'), fullPage: true });
    const ok = hooks.got.filter((g) => g.accepted);
    assert.equal(ok.length, 1, JSON.stringify(hooks.got));
    assert.match(ok[0].body, /channel_occupied/);
    assert.match(ok[0].body, /dash-live-room/);
    assert.ok(ok[0].signature);
    assert.deepEqual(foreign, []);
  });
});
