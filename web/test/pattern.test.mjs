// The page's test-pattern reader against the worked example of docs/TEST_PATTERN.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blockSize, codeBox, crc8, readCode } from '../src/pattern.js';
import { readCodeFromGreen } from './code-reader.mjs';

// The cells of the worked example (frame 1, captured at 1700000000123 ms), white as 1.
const EXAMPLE = [
  '1 0000000000000000000000 0',
  '0 0000000001000000011000 1',
  '1 1011110011111110010101 0',
  '0 1010000111101110011001 1',
].map((row) => row.replaceAll(' ', ''));

/** An RGBA picture of w x h, black, with the example's cells drawn at block size B. */
function picture(w, h, rows = EXAMPLE) {
  const B = blockSize(w, h);
  const rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 3; i < rgba.length; i += 4) rgba[i] = 255;
  rows.forEach((row, r) => {
    [...row].forEach((cell, c) => {
      if (cell !== '1') return;
      for (let y = (r + 1) * B; y < (r + 2) * B; y++) {
        for (let x = (c + 1) * B; x < (c + 2) * B; x++) rgba.fill(255, (y * w + x) * 4, (y * w + x) * 4 + 3);
      }
    });
  });
  return { rgba, B };
}

test('crc8 is CRC-8/AUTOSAR', () => {
  assert.equal(crc8(new TextEncoder().encode('123456789')), 0xdf);
});

test('block sizes follow the table of the contract', () => {
  assert.deepEqual(
    [[160, 120], [320, 240], [640, 480], [1280, 720], [1920, 1080]].map(([w, h]) => blockSize(w, h)),
    [4, 8, 16, 24, 36],
  );
  assert.equal(codeBox(100, 100), null);
  assert.deepEqual(codeBox(1280, 720), { b: 24, width: 624, height: 144 });
});

test('the worked example reads back as frame 1 at 1700000000123 ms', () => {
  for (const [w, h] of [[320, 240], [1280, 720]]) {
    const { rgba, B } = picture(w, h);
    assert.deepEqual(readCode(rgba, w, B), { frame: 1, captureMs: 1700000000123 });
    assert.deepEqual(readCodeFromGreen(rgba, w, w, h), { frame: 1, captureMs: 1700000000123, B });
  }
});

test('a mirrored, blank or corrupted picture gives no code', () => {
  const w = 320;
  const h = 240;
  const mirrored = picture(w, h, EXAMPLE.map((row) => [...row].reverse().join('')));
  assert.equal(readCode(mirrored.rgba, w, mirrored.B), null);
  const blank = picture(w, h, ['0'.repeat(24), '0'.repeat(24), '0'.repeat(24), '0'.repeat(24)]);
  assert.equal(readCode(blank.rgba, w, blank.B), null);
  // One payload bit flipped: the CRC catches it.
  const flipped = EXAMPLE.slice();
  flipped[2] = flipped[2].slice(0, 5) + (flipped[2][5] === '1' ? '0' : '1') + flipped[2].slice(6);
  const bad = picture(w, h, flipped);
  assert.equal(readCode(bad.rgba, w, bad.B), null);
  assert.equal(readCodeFromGreen(bad.rgba, w, w, h), null);
});
