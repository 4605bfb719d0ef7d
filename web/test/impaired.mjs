// Impaired links for the rate-control tests and `make netbench`: a real spyglass with the test
// pattern in the device's namespace of a netlab network (tests/netlab), viewers in their own
// namespaces behind shaped links (kernel rate limits; the link emulator's delay, jitter, loss and
// cuts), headless Chromium playing the viewer page there, and readers for what each side saw:
// Chromium's getStats(), the device's data-channel stats, the bottleneck's queue discipline.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { distDir, sleep, spyglassBin, until } from './harness.mjs';
import { Netlab } from './netlab.mjs';

export { sleep, until };

/**
 * A netlab network with the device site `dev` and the viewer sites given (no NAT anywhere: this is
 * about links, not traversal). `viewers`: { name: link } with netlab link specs (rate_kbit,
 * delay_ms, jitter_ms, loss, queue_ms, up/down). `device`: the device site's own link, if any.
 */
export function impairedLab({ viewers, device = null, check = 'full' }) {
  const sites = [{ name: 'dev', nat: 'none', ...(device ? { link: device } : { link: { emulator: true } }) }];
  for (const [name, link] of Object.entries(viewers)) {
    sites.push({ name, nat: 'none', link: { emulator: true, seed: 7, ...link } });
  }
  return Netlab.up({ sites, broker: true, turn: false }, { check });
}

/** The daemon in the device's namespace: 640x480@30 test pattern unless `args` say otherwise. */
export function startDevice(lab, { args = [], size = '640x480' } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'spyglass-impaired-'));
  const logFile = join(dir, 'spyglass.log');
  const id = `lab/cam-${Math.floor(Math.random() * 1e9)}`;
  const child = lab.spawn('dev', spyglassBin(), [
    '--id', id,
    '--mqtt', lab.info.broker.url,
    '--video', 'test',
    '--size', size,
    '--fps', '30',
    '--rtc-bind', lab.ip('dev'),
    '--mdns', 'off',
    '--http', 'off',
    '--max-viewers', '12',
    ...args,
  ], {
    stdio: ['ignore', 'ignore', openSync(logFile, 'w')],
    env: { ...process.env, RUST_LOG: process.env.SPYGLASS_LOG ?? 'spyglass=debug,info' },
  });
  return {
    id,
    child,
    log: () => readFileSync(logFile, 'utf8'),
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Chromium in `host`'s namespace playing the device through the viewer page. */
export async function openViewer(lab, host, device) {
  // The page comes from playwright (no network address), the broker is on a private address:
  // Chromium's Local Network Access checks would block the WebSocket.
  const browser = await lab.launchBrowser(host, { args: ['--disable-features=LocalNetworkAccessChecks'] });
  const page = await browser.context.newPage();
  await page.route('http://page.netlab/**', (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/+/, '') || 'index.html';
    if (path === 'config.json') return route.fulfill({ status: 404, body: '' });
    return route.fulfill({ path: join(distDir, path) });
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const url = `http://page.netlab/index.html?broker=${encodeURIComponent(lab.info.broker.ws_url)}` +
    `&id=${encodeURIComponent(device.id)}`;
  await page.goto(url);
  try {
    await until(`${host}: playing`, async () => (await page.evaluate(() => window.spyglass.state)) === 'live', 40000);
  } catch (e) {
    const state = await page.evaluate(() => `${window.spyglass.state}: ${window.spyglass.message}`).catch(() => '?');
    await browser.close();
    throw new Error(`${e.message}; page ${state}; page errors ${JSON.stringify(errors)}\n--- device log ---\n${device.log().slice(-4000)}`);
  }
  return { host, browser, page, errors };
}

/** Chromium's inbound video figures for the page's session (cumulative). */
export async function inbound(page) {
  return page.evaluate(async () => {
    const pc = window.spyglass && window.spyglass.pc;
    if (!pc) return null;
    let v = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') v = s;
    });
    if (!v) return null;
    return {
      at: performance.now(),
      sessions: window.spyglass.sessions,
      framesDecoded: v.framesDecoded ?? 0,
      framesReceived: v.framesReceived ?? 0,
      keyFramesDecoded: v.keyFramesDecoded ?? 0,
      freezeCount: v.freezeCount ?? 0,
      totalFreezesDuration: v.totalFreezesDuration ?? 0,
      packetsReceived: v.packetsReceived ?? 0,
      packetsLost: v.packetsLost ?? 0,
      bytesReceived: v.bytesReceived ?? 0,
      nackCount: v.nackCount ?? 0,
      pliCount: v.pliCount ?? 0,
      firCount: v.firCount ?? 0,
      retransmittedPacketsReceived: v.retransmittedPacketsReceived ?? 0,
      retransmittedBytesReceived: v.retransmittedBytesReceived ?? 0,
      jitterBufferDelay: v.jitterBufferDelay ?? 0,
      jitterBufferEmittedCount: v.jitterBufferEmittedCount ?? 0,
    };
  });
}

/** The device's stats for this viewer, over the page's data channel (docs/PROTOCOL.md); null
 * when no reply comes within `timeoutMs` (the link may be cut). */
export async function deviceStats(page, timeoutMs = 700) {
  return page.evaluate(async (timeoutMs) => {
    const channel = window.spyglass.session && window.spyglass.session.channel;
    if (!channel || !channel.open) return null;
    const late = new Promise((resolve) => setTimeout(() => resolve(null), timeoutMs));
    return Promise.race([channel.request('stats').catch(() => null), late]);
  }, timeoutMs);
}

/**
 * Cut `site`'s link for `seconds`, then restore it and measure how long until the viewer on
 * `page` decodes a new frame: { restoredToFrameMs, sessionsBefore, sessionsAfter }.
 */
export async function cutAndRecover(lab, site, page, seconds, timeoutMs = 20000) {
  const before = await inbound(page);
  lab.cut(site);
  await sleep(seconds * 1000);
  const cutEnd = await inbound(page);
  // The clock starts in the page before the link comes back; the poll runs in the page too, so
  // that the reading does not wait on this process (restoring the link takes it a few hundred ms).
  await page.evaluate(([decoded, timeoutMs]) => {
    const start = performance.now();
    window.__recovery = new Promise((resolve) => {
      const poll = async () => {
        const pc = window.spyglass.pc;
        let n = null;
        if (pc) (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded; });
        if (n !== null && n > decoded) return resolve(performance.now() - start);
        if (performance.now() - start > timeoutMs) return resolve(null);
        setTimeout(poll, 10);
      };
      poll();
    });
  }, [cutEnd?.framesDecoded ?? 0, timeoutMs]);
  lab.restore(site);
  const ms = await page.evaluate(() => window.__recovery);
  const after = await inbound(page);
  return {
    restoredToFrameMs: ms,
    framesDuringCut: (cutEnd?.framesDecoded ?? 0) - (before?.framesDecoded ?? 0),
    sessionsBefore: before?.sessions,
    sessionsAfter: after?.sessions,
  };
}

/** Figures between two `inbound` samples. */
export function delta(a, b) {
  const s = (b.at - a.at) / 1000;
  return {
    seconds: s,
    fps: (b.framesDecoded - a.framesDecoded) / s,
    kbps: (8 * (b.bytesReceived - a.bytesReceived)) / 1000 / s,
    freezes: b.freezeCount - a.freezeCount,
    freezeSeconds: b.totalFreezesDuration - a.totalFreezesDuration,
    nacks: b.nackCount - a.nackCount,
    plis: b.pliCount - a.pliCount,
    keyframes: b.keyFramesDecoded - a.keyFramesDecoded,
    lost: b.packetsLost - a.packetsLost,
    retransmittedKbps: (8 * (b.retransmittedBytesReceived - a.retransmittedBytesReceived)) / 1000 / s,
  };
}

/**
 * What the kernel's rate limit of a site's link let through and dropped so far: its htb/bfifo on
 * the internet's side (`down`, towards the site) or on the site's own WAN interface (`up`).
 * { sentBytes, sentPackets, droppedPackets } or null when the link has no rate limit.
 */
export function bottleneck(lab, site, dir = 'down') {
  const state = JSON.parse(readFileSync(join(lab.info.state_dir, 'state.json'), 'utf8'));
  const st = state.sites[site];
  const [ns, dev] = dir === 'down' ? [state.nodes.inet, st.inet_if] : [st.edge_ns, st.wan_if];
  const qdiscs = JSON.parse(execFileSync('ip', ['netns', 'exec', ns, 'tc', '-s', '-j', 'qdisc', 'show', 'dev', dev], { encoding: 'utf8' }));
  const htb = qdiscs.find((q) => q.kind === 'htb');
  const fifo = qdiscs.find((q) => q.kind === 'bfifo');
  if (!htb) return null;
  return { sentBytes: htb.bytes, sentPackets: htb.packets, droppedPackets: (fifo ?? htb).drops };
}

/** Sample `fn` every `everyMs` for `seconds`: [{t, ...}] */
export async function sampleFor(seconds, everyMs, fn) {
  const out = [];
  const start = Date.now();
  while (Date.now() - start < seconds * 1000) {
    const t0 = Date.now();
    out.push({ t: (t0 - start) / 1000, ...(await fn()) });
    const wait = everyMs - (Date.now() - t0);
    if (wait > 0) await sleep(wait);
  }
  return out;
}

