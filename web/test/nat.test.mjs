// The viewer page through real NATs (issue 14), on the namespace test network (tests/netlab):
// the daemon behind its NAT router, Mosquitto and coturn (TURN REST API secret) in the
// "internet", and headless Chromium with the real page behind its own router.
//
// - Case 2: both behind symmetric NAT. The page asks the device for ICE servers and gets TURN
//   with a time-limited credential made from the secret (never the secret): a relay pair, frames.
// - Case 3: the viewer's network blocks UDP and lets TCP through only to the TURN server's TCP and
//   TLS ports: the page relays over TCP, and over TLS (`turns:`), while the device stays on UDP.
// - The network change: the page's host moves to another NAT (Wi-Fi to LTE); the page restarts
//   ICE on the same connection and CID, the device renegotiates the same session in place, and the
//   picture comes back: same session, no new DTLS handshake.
//
// Assertions are on behaviour (frames, pair types, one session), never on a time; the times are
// printed. Needs root, iproute2, nftables, coturn, mosquitto, chromium (`make deps`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netlab } from './netlab.mjs';
import { distDir, spyglassBin, sleep, until } from './harness.mjs';

const PAGE = 'http://page.netlab';

/** The environment without RUST_LOG: the daemon's default log filter. */
function withoutRustLog() {
  const env = { ...process.env };
  delete env.RUST_LOG;
  return env;
}

/** The daemon on `host`, logging to memory; resolves once it is online. */
async function startDaemon(lab, host, extra) {
  const id = `nat/cam-${Math.floor(Math.random() * 1e9)}`;
  const child = lab.spawn(host, spyglassBin(), [
    '--id', id, '--mqtt', lab.info.broker.url, '--video', 'test', '--size', '320x240',
    '--bitrate', '400', '--rtc-bind', lab.ip(host), '--mdns', 'off', '--http', 'off',
    '--audio', 'none', ...extra,
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: withoutRustLog() });
  const log = [];
  const lines = createInterface({ input: child.stderr });
  const online = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      log.push(line);
      if (line.includes(' online')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`spyglass exited (${code}):\n${log.join('\n')}`)));
  });
  await Promise.race([online, sleep(20000).then(() => { throw new Error(`spyglass not online:\n${log.join('\n')}`); })]);
  return {
    id,
    log,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(3000).then(() => child.kill('SIGKILL'))]);
    },
    lines: (text) => log.filter((l) => l.includes(text)),
  };
}

/** The coturn secret in a file only root may read, as a deployment would keep it. */
function secretFile(lab) {
  const path = join(lab.info.state_dir, 'turn-secret');
  writeFileSync(path, `${lab.info.turn.secret}\n`, { mode: 0o600 });
  return path;
}

/** Chromium in `host`'s namespace with the real page (served without a network) watching `id`. */
async function openPage(lab, host, id) {
  // The page comes from a public-looking origin and talks to a private broker address: Chromium's
  // local network access checks would refuse that (tests/netlab/README.md).
  const browser = await lab.launchBrowser(host, { args: ['--disable-features=LocalNetworkAccessChecks'] });
  const page = await browser.context.newPage();
  page.on('console', (m) => process.stderr.write(`[page ${Date.now() % 100000}] ${m.text()}\n`));
  await page.route(`${PAGE}/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\//, '') || 'index.html';
    // No /config.json of a daemon here: the URL says everything.
    if (path === 'config.json') return route.fulfill({ status: 200, contentType: 'application/json', body: '{}' });
    return route.fulfill({ path: join(distDir, path) });
  });
  const url = `${PAGE}/index.html?broker=${encodeURIComponent(lab.info.broker.ws_url)}&id=${encodeURIComponent(id)}`;
  await page.goto(url);
  return { browser, page };
}

/** The page's state, frame count and selected candidate pair (from Chromium's stats). */
function pageState(page) {
  return page.evaluate(async () => {
    const v = window.spyglass;
    let pair = null;
    if (v.pc) {
      const stats = await v.pc.getStats();
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const p = stats.get(s.selectedCandidatePairId);
          const local = stats.get(p.localCandidateId);
          const remote = stats.get(p.remoteCandidateId);
          pair = {
            local: local.candidateType,
            localProtocol: local.protocol,
            relayProtocol: local.relayProtocol ?? null,
            localAddress: local.address,
            remote: remote.candidateType,
            remoteAddress: remote.address,
          };
        }
      });
    }
    const servers = v.pc ? v.pc.getConfiguration().iceServers : [];
    return {
      state: v.state,
      message: v.message,
      frames: v.frames,
      sessions: v.sessions,
      iceRestarts: v.iceRestarts,
      firstFrameMs: v.metrics.firstFrameMs,
      stages: v.metrics.stages,
      reconnectMs: v.metrics.reconnectMs,
      frameTimes: v.frameTimes,
      pair,
      servers: servers.map((s) => ({ urls: s.urls, username: s.username ?? null, credential: !!s.credential })),
    };
  });
}

/** Wait until the page plays and has shown `frames` more frames than `after`. */
async function playing(page, after = 0, frames = 20, timeoutMs = 30000) {
  return until(`the page to show ${frames} frames`, async () => {
    const s = await pageState(page);
    return s.state === 'live' && s.frames >= after + frames ? s : null;
  }, timeoutMs);
}

/** The device handed out TURN with a credential made for this page (EXPIRY:web-CID), not a password of its own. */
function assertRestCredential(state, lab) {
  const turn = state.servers.filter((s) => [s.urls].flat().some((u) => u.startsWith('turn')));
  assert.ok(turn.length > 0, `no TURN server from the device: ${JSON.stringify(state.servers)}`);
  for (const s of turn) {
    assert.match(s.username, /^\d{10}:web-[0-9a-f]{16}$/, 'a TURN REST API user name');
    assert.ok(s.credential, 'with a credential');
    assert.ok(!JSON.stringify(s).includes(lab.info.turn.secret), 'the secret itself is never handed out');
  }
  const expiry = Number(turn[0].username.split(':')[0]);
  const now = Date.now() / 1000;
  assert.ok(expiry > now && expiry <= now + 3600 + 60, `expiry ${expiry} within the hour`);
}

test('case 2, Chromium: both behind symmetric NAT, TURN over UDP with REST credentials from the device: a relay pair', async () => {
  const lab = Netlab.up({
    sites: [{ name: 'dev', nat: 'symmetric' }, { name: 'v1', nat: 'symmetric' }],
    turn: { auth: 'secret' },
  }, { check: 'basic' });
  let browser;
  let daemon;
  try {
    daemon = await startDaemon(lab, 'dev', [
      '--stun', lab.info.turn.stun_url, '--turn', lab.info.turn.urls.udp,
      '--turn-secret-file', secretFile(lab),
    ]);
    const opened = await openPage(lab, 'v1', daemon.id);
    browser = opened.browser;
    const s = await playing(opened.page);
    assertRestCredential(s, lab);
    assert.ok(s.pair, 'a selected pair');
    assert.ok(s.pair.local === 'relay' || s.pair.remote === 'relay', `a relay pair: ${JSON.stringify(s.pair)}`);
    const device = daemon.lines('viewer connected').at(-1) ?? '';
    console.log(`case 2 (Chromium, symmetric/symmetric, TURN UDP, REST credentials): pair viewer ${s.pair.local}/${s.pair.localProtocol} device ${s.pair.remote}; ` +
      `offer -> first frame ${s.firstFrameMs[0]} ms (stages ${JSON.stringify(s.stages[0])}); device: ${device.replace(/^.*viewer connected/, 'viewer connected')}`);
  } finally {
    await browser?.close();
    await daemon?.stop();
    lab.down();
  }
});

test('case 3, Chromium: UDP blocked except to TURN over TCP and TLS: the page relays over TCP, then TLS; the device stays on UDP', async () => {
  const lab = Netlab.up({
    sites: [{ name: 'dev', nat: 'symmetric' }, { name: 'v1', nat: 'symmetric', filter: 'turn-tcp-only' }],
    turn: { auth: 'secret' },
  }, { check: 'basic' });
  const secret = secretFile(lab);
  try {
    for (const transport of ['tcp', 'tls']) {
      let browser;
      let daemon;
      try {
        daemon = await startDaemon(lab, 'dev', [
          '--stun', lab.info.turn.stun_url, '--turn', lab.info.turn.urls.udp,
          '--turn-secret-file', secret, '--viewer-turn', lab.info.turn.urls[transport],
        ]);
        const opened = await openPage(lab, 'v1', daemon.id);
        browser = opened.browser;
        const s = await playing(opened.page);
        assertRestCredential(s, lab);
        assert.equal(s.pair?.local, 'relay', `the page relays: ${JSON.stringify(s.pair)}`);
        assert.equal(s.pair.relayProtocol, transport, `over ${transport}: ${JSON.stringify(s.pair)}`);
        // The device's side of the path is UDP (webrtc 0.21 has no TCP or TLS TURN): the relay
        // reaches it over UDP, on one of its own candidates.
        const device = daemon.lines('viewer connected').at(-1) ?? '';
        assert.ok(!/local=\S+\/tcp/.test(device), device);
        console.log(`case 3 (Chromium, TURN over ${transport.toUpperCase()}): pair viewer ${s.pair.local}/${s.pair.relayProtocol} device ${s.pair.remote}; ` +
          `offer -> first frame ${s.firstFrameMs[0]} ms (stages ${JSON.stringify(s.stages[0])}); device: ${device.replace(/^.*viewer connected/, 'viewer connected')}`);
      } finally {
        await browser?.close();
        await daemon?.stop();
      }
    }
  } finally {
    lab.down();
  }
});

test('network change, Chromium: the page moves to another NAT and gets its picture back on the same session (ICE restart in place)', async () => {
  const lab = Netlab.up({
    sites: [
      { name: 'dev', nat: 'cone' },
      { name: 'v1', nat: 'cone' },
      { name: 'lte', nat: 'symmetric', hosts: [] },
    ],
    turn: { auth: 'secret' },
  }, { check: 'basic' });
  let browser;
  let daemon;
  try {
    daemon = await startDaemon(lab, 'dev', [
      '--stun', lab.info.turn.stun_url, '--turn', lab.info.turn.urls.udp,
      '--turn-secret-file', secretFile(lab),
    ]);
    const opened = await openPage(lab, 'v1', daemon.id);
    browser = opened.browser;
    const before = await playing(opened.page);
    const oldAddress = before.pair?.localAddress;

    const movedAt = Date.now();
    const moved = lab.moveHost('v1', 'lte');
    let last;
    const after = await until('frames after the move', async () => {
      const s = await pageState(opened.page);
      last = s;
      return s.state === 'live' && s.iceRestarts >= 1 && s.frameTimes.filter((t) => t > movedAt).length >= 30 ? s : null;
    }, 60000).catch((e) => {
      const { frameTimes, ...rest } = last ?? {};
      throw new Error(`${e.message}\npage: ${JSON.stringify(rest)}, ${frameTimes?.filter((t) => t > movedAt).length} frames since the move\ndevice log:\n${daemon.log.join('\n')}`);
    });
    // The same session: the page made no new one, the device renegotiated it in place and
    // connected it again, and never ended or started another.
    assert.equal(after.sessions, 1, `one session for the whole run; device log:\n${daemon.log.join('\n')}`);
    assert.ok(after.reconnectMs.length >= 1, 'the ICE restart connected again');
    await until('the device to log the reconnection', () => daemon.lines('viewer reconnected after an ICE restart').length >= 1, 10000);
    assert.ok(daemon.lines('session renegotiated in place').length >= 1, daemon.log.join('\n'));
    // Only a session's first connection logs the selected pair ("viewer connected again" follows
    // a recovered connection of the same session).
    assert.equal(daemon.lines('viewer connected, selected pair').length, 1, `one connection, no second session; device log:\n${daemon.log.join('\n')}`);
    assert.equal(daemon.lines('session ended').length, 0, daemon.log.join('\n'));
    assert.notEqual(after.pair?.localAddress, oldAddress, `a new path from the new network: ${JSON.stringify(after.pair)}`);
    // The picture came back with the first frame after the longest pause since the move.
    const times = after.frameTimes.filter((t) => t > movedAt - 1000);
    let back = times[0];
    let pause = 0;
    for (let i = 1; i < times.length; i++) {
      if (times[i] - times[i - 1] > pause) [pause, back] = [times[i] - times[i - 1], times[i]];
    }
    console.log(`network change (Chromium, cone -> symmetric NAT, now ${moved.ip}): ${after.iceRestarts} ICE restart(s); ` +
      `restart (loss noticed) -> connected again ${after.reconnectMs.join(', ')} ms; move -> picture back ${back - movedAt} ms ` +
      `(longest pause ${pause} ms); pair now viewer ${after.pair.local} device ${after.pair.remote}`);
  } finally {
    await browser?.close();
    await daemon?.stop();
    lab.down();
  }
});
