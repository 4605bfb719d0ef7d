// H.264 passthrough in Chromium (issue 16): a process writes H.264 in Main or High profile, as
// rpicam-vid does with the Pi's hardware encoder (here Debian's ffmpeg with libx264: headers
// before every IDR, an IDR every 30 frames, no B-frames), and spyglass sends it as it is.
// Chromium offers 42001f, 42e01f, 4d001f and f4001f: Main goes to its Main entry, High to its
// High 4:4:4 Predictive entry, whose decoder takes High streams. Everything on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Broker, Spyglass, fileFixture, sleep, until, videoPixels, videoStats } from './harness.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;

function producer(profile) {
  return 'exec:ffmpeg -hide_banner -nostats -loglevel error -re -f lavfi '
    + '-i testsrc2=size=352x288:rate=30 -c:v libx264 -preset veryfast -tune zerolatency '
    + `-profile:v ${profile} -bf 0 -g 30 -pix_fmt yuv420p -x264-params repeat-headers=1 -f h264 -`;
}

async function playPassthrough(profile) {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const daemon = await Spyglass.start(broker, {
    size: '352x288',
    video: producer(profile),
    extra: ['--exec-format', 'h264'],
  });
  cleanups.push(() => daemon.close());
  const page = await fixture.browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${daemon.pageUrl}?id=${encodeURIComponent(daemon.id)}`);
  await until('the page to play', async () => (await page.evaluate(() => window.spyglass?.state)) === 'live', 30000)
    .catch((e) => { throw new Error(`${e.message}\n${daemon.log().slice(-3000)}`); });
  const first = await videoStats(page);
  await sleep(1500);
  const stats = await videoStats(page);
  assert.ok(stats.framesDecoded > first.framesDecoded + 20, `frames decoded: ${first.framesDecoded} -> ${stats.framesDecoded}`);
  assert.deepEqual([stats.frameWidth, stats.frameHeight], [352, 288]);
  // Real pictures: testsrc2 is colourful, neither black nor one grey.
  const pixels = await videoPixels(page, 64, 64);
  const lumas = [];
  for (let i = 0; i < pixels.length; i += 4) lumas.push((pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3);
  const mean = lumas.reduce((a, b) => a + b, 0) / lumas.length;
  assert.ok(mean > 20, `mean brightness ${mean}`);
  assert.ok(Math.max(...lumas) - Math.min(...lumas) > 30, 'the picture has detail');
  const answer = await page.evaluate(() => window.spyglass.pc.currentRemoteDescription.sdp);
  assert.deepEqual(errors, []);
  await page.close();
  return { answer, log: daemon.log() };
}

/** The profile-level-id of the answer's one H.264 payload type. */
function answeredProfile(sdp) {
  const ids = [...sdp.matchAll(/a=fmtp:\d+ [^\r\n]*profile-level-id=([0-9a-f]{6})/gi)].map((m) => m[1]);
  assert.equal(ids.length, 1, `one H.264 payload type in the answer:\n${sdp}`);
  return ids[0].toLowerCase();
}

test('Chromium plays a Main profile stream passed through', async () => {
  const { answer, log } = await playPassthrough('main');
  assert.match(answeredProfile(answer), /^4d00/);
  assert.match(log, /passthrough/);
});

test('Chromium plays a High profile stream through its High 4:4:4 Predictive entry', async () => {
  const { answer } = await playPassthrough('high');
  assert.match(answeredProfile(answer), /^f400/);
});
