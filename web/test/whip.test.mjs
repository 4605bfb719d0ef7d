// spyglass publishing over WHIP (--whip) to a real SFU: Debian's Janus (VideoRoom) behind the
// tests' WHIP front-end (web/test/standards/), with Chromium subscribers that receive the stream
// from Janus, not from spyglass. The publication survives the SFU going away: its Janus session
// dropped by the front-end, and Janus itself restarted. Everything on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { Broker, Spyglass, fileFixture, until } from './harness.mjs';
import { readCodeFromGreen } from './code-reader.mjs';
import { Janus } from './standards/janus.mjs';
import { WhipFrontend } from './standards/whip-frontend.mjs';
import { PageServer, subscribeJanus, watchRoom } from './standards/pages.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;
const TOKEN = 'whip-test-token-17';

async function start({ token = TOKEN, video, size = '320x240', extra = [] } = {}) {
  const janus = await Janus.start();
  cleanups.push(() => janus.close());
  const whip = await WhipFrontend.start({ janus, token: TOKEN });
  cleanups.push(() => whip.close());
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const dir = mkdtempSync(join(tmpdir(), 'spyglass-whip-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), `${token}\n`, { mode: 0o600 });
  const room = `cam-${process.pid}`;
  const watcher = await watchRoom(janus, room);
  cleanups.push(() => watcher.close());
  const daemon = await Spyglass.start(broker, {
    size,
    video,
    extra: ['--audio', 'tone', '--whip', whip.endpoint(room), '--whip-token-file', join(dir, 'token'), ...extra],
  });
  cleanups.push(() => daemon.close());
  return { janus, whip, pages, broker, daemon, room, watcher };
}

/** The device's retained status. */
async function status(broker, id) {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  try {
    const got = new Promise((resolve) => client.on('message', (_t, p) => resolve(JSON.parse(p.toString()))));
    await client.subscribeAsync(`${id}/status`);
    return await got;
  } finally {
    await client.endAsync();
  }
}

/** A subscriber of `feed` that decodes spyglass's test pattern (its code read from the pixels). */
async function subscribe(ctx, feed) {
  const sub = await subscribeJanus(fixture.browser.context, ctx.pages, ctx.janus, ctx.room, feed);
  cleanups.push(() => sub.close());
  const st = await until('frames from Janus', async () => {
    const s = await sub.stats();
    return s.framesDecoded > 5 && s.videoWidth > 0 ? s : null;
  }, 30000);
  assert.deepEqual([st.videoWidth, st.videoHeight], [320, 240]);
  const code = await sub.page.evaluate(() => {
    const v = document.getElementById('video');
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    return Array.from(g.getImageData(0, 0, c.width, c.height).data);
  });
  const read = readCodeFromGreen(code, 320, 320, 240);
  assert.ok(read, 'the test pattern\'s code reads back at the subscriber');
  return { sub, read };
}

test('spyglass publishes over WHIP into Janus; two Chromium subscribers decode it from Janus', async (t) => {
  const ctx = await start();
  const feed = await ctx.watcher.next();
  const subs = await Promise.all([0, 1].map(() => subscribe(ctx, feed)));
  for (const { sub } of subs) await until('audio from Janus', async () => (await sub.stats()).audioPackets > 0);

  // The device reports the publication; the SFU is not one of its viewers.
  const st = await until('status live', async () => {
    const s = await status(ctx.broker, ctx.daemon.id);
    return s.whip?.state === 'live' ? s : null;
  });
  assert.deepEqual(st.whip, { state: 'live', reconnects: 0, error: null });
  assert.equal(st.viewers, 0);
  const posts = ctx.whip.exchanges.filter((x) => x.method === 'POST');
  assert.deepEqual(posts.map((x) => x.status), [201]);
  const [session] = ctx.whip.sessions.values();
  assert.ok(session.webrtcup, 'Janus reports the PeerConnection up');
  assert.match(session.offer, /a=sendonly/);
  assert.match(session.offer, /m=audio /);
  assert.match(session.offer, /a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 /, 'the offer carries the device\'s candidates');
});

test('the publication comes back when the SFU drops it and when Janus restarts', async (t) => {
  const ctx = await start();
  let feed = await ctx.watcher.next();
  await subscribe(ctx, feed);

  // 1. The front-end ends the Janus session (as an SFU does on a kick or a timeout): Janus hangs
  // up, spyglass notices and publishes again.
  const dropped = Date.now();
  const [session] = ctx.whip.sessions.values();
  await ctx.whip.end(session);
  feed = await ctx.watcher.next();
  const again = await subscribe(ctx, feed);
  t.diagnostic(`session dropped -> new feed decoded: ${Date.now() - dropped} ms`);
  const st = await until('status live again', async () => {
    const s = await status(ctx.broker, ctx.daemon.id);
    return s.whip?.state === 'live' && s.whip.reconnects >= 1 ? s : null;
  });
  assert.ok(st.whip.error, 'the status says why the last session ended');
  await again.sub.close();

  // 2. Janus dies and comes back on the same port: the old connection fails (ICE consent), a
  // new session starts against the new Janus.
  const watcherDown = ctx.watcher;
  await ctx.janus.stop();
  const stopped = Date.now();
  await ctx.janus.run();
  const watcher = await watchRoom(ctx.janus, ctx.room);
  cleanups.push(() => watcher.close());
  await watcherDown.close().catch(() => {});
  feed = await watcher.next();
  await subscribe(ctx, feed);
  t.diagnostic(`Janus restarted -> feed decoded again: ${Date.now() - stopped} ms`);
  const after = await until('status live after the restart', async () => {
    const s = await status(ctx.broker, ctx.daemon.id);
    return s.whip?.state === 'live' && s.whip.reconnects >= 2 ? s : null;
  });
  t.diagnostic(`status: ${JSON.stringify(after.whip)}`);
  assert.doesNotMatch(ctx.daemon.log(), /panicked/);
});

test('a refused publication is retried with back-off and reported', async () => {
  const ctx = await start({ token: 'not-the-token' });
  const st = await until('status retrying', async () => {
    const s = await status(ctx.broker, ctx.daemon.id);
    return s.whip?.state === 'retrying' ? s : null;
  });
  assert.match(st.whip.error, /401/);
  await new Promise((r) => setTimeout(r, 4000));
  const posts = ctx.whip.exchanges.filter((x) => x.method === 'POST');
  assert.ok(posts.every((x) => x.status === 401));
  // 1 s, 2 s, 4 s (jittered down to half): at most 3 or 4 attempts in the first ~5 s.
  assert.ok(posts.length >= 2 && posts.length <= 4, `${posts.length} POSTs`);
  assert.equal(ctx.whip.sessions.size, 0);
});

test('a camera whose own H.264 is passed through is not published, and the status says why', async () => {
  // Debian's ffmpeg writing High-profile H.264, as `rpicam-vid --codec h264` would.
  const video = 'exec:ffmpeg -hide_banner -nostats -loglevel error -re -f lavfi '
    + '-i testsrc2=size=352x288:rate=30 -c:v libx264 -preset veryfast -tune zerolatency '
    + '-profile:v high -bf 0 -g 30 -pix_fmt yuv420p -x264-params repeat-headers=1 -f h264 -';
  const ctx = await start({ video, size: '352x288', extra: ['--exec-format', 'h264'] });
  const st = await until('status with the WHIP error', async () => {
    const s = await status(ctx.broker, ctx.daemon.id);
    return s.whip?.error ? s : null;
  }, 30000);
  assert.match(st.whip.error, /passed through/);
  assert.notEqual(st.whip.state, 'live');
  // Nothing mislabelled reached the SFU: no offer was posted.
  assert.deepEqual(ctx.whip.exchanges.filter((x) => x.method === 'POST'), []);
});
