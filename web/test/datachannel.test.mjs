// The page's data channel controls, end to end: a real spyglass with the test pattern, its page in
// headless Chromium, a private Mosquitto. Everything listens on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Broker, Spyglass, fileFixture, until, videoPixels } from './harness.mjs';
import { readCodeFromGreen } from './code-reader.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;

const W = 352;
const H = 288;

async function meanGreen(page) {
  const rgba = await videoPixels(page, W, H);
  let sum = 0;
  for (let i = 1; i < rgba.length; i += 4) sum += rgba[i];
  return sum / (rgba.length / 4);
}

test('the snapshot button downloads a JPEG of the stream; the picture panel changes the picture', async (t) => {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const daemon = await Spyglass.start(broker, { size: `${W}x${H}` });
  cleanups.push(() => daemon.close());
  const page = await fixture.browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(daemon.pageUrl);
  await until('page state live', async () => (await page.evaluate(() => window.spyglass.state)) === 'live');
  await until('the snapshot button enabled', async () => !(await page.locator('#snapshot-button').isDisabled()));

  // Snapshot: a download that is a JPEG the browser decodes at the stream's size, showing the
  // test pattern's code.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#snapshot-button')]);
  assert.match(download.suggestedFilename(), /\.jpg$/);
  const jpeg = readFileSync(await download.path());
  assert.deepEqual([jpeg[0], jpeg[1]], [0xff, 0xd8], 'starts with SOI');
  assert.deepEqual([jpeg.at(-2), jpeg.at(-1)], [0xff, 0xd9], 'ends with EOI');
  const decoded = await page.evaluate(async (b64) => {
    const blob = await (await fetch(`data:image/jpeg;base64,${b64}`)).blob();
    const bitmap = await createImageBitmap(blob);
    const c = document.createElement('canvas');
    c.width = bitmap.width;
    c.height = bitmap.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    return { width: bitmap.width, height: bitmap.height, rgba: Array.from(ctx.getImageData(0, 0, c.width, c.height).data) };
  }, jpeg.toString('base64'));
  assert.deepEqual([decoded.width, decoded.height], [W, H]);
  const code = readCodeFromGreen(decoded.rgba, W, W, H);
  assert.ok(code, 'the snapshot shows the test pattern code');
  const last = await page.evaluate(() => window.spyglass.lastSnapshot);
  assert.equal(last.size, jpeg.length);
  t.diagnostic(`snapshot: ${jpeg.length} bytes, frame ${code.frame}`);

  // Picture panel: lists the test pattern's controls; raising brightness brightens the video.
  await page.click('#picture-button');
  const brightness = page.locator('#control-list input[data-control="brightness"]');
  await until('brightness in the panel', async () => (await brightness.count()) === 1);
  assert.equal(await page.locator('#control-list input[data-control="contrast"]').count(), 1);
  assert.equal(await brightness.getAttribute('min'), '0');
  assert.equal(await brightness.getAttribute('max'), '255');
  assert.equal(await brightness.inputValue(), '128');
  const dark = await meanGreen(page);
  await brightness.evaluate((el) => {
    el.value = '220';
    el.dispatchEvent(new Event('change'));
  });
  await until('the device confirms 220', async () =>
    /220/.test(await page.locator('#control-list label:has(input[data-control="brightness"]) output').textContent()));
  let bright = dark;
  await until('a brighter picture', async () => {
    bright = await meanGreen(page);
    return bright > dark + 40;
  });
  t.diagnostic(`mean green ${dark.toFixed(1)} -> ${bright.toFixed(1)}`);
  assert.deepEqual(errors, []);
});
