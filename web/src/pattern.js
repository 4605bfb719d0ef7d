// Reads the test pattern's code (frame counter and capture time) from decoded pixels.
// The layout is the public contract in docs/TEST_PATTERN.md; this is a direct transcription.

/** Block size B for a W x H picture. */
export function blockSize(w, h) {
  return Math.max(4, 2 * Math.floor(Math.min(Math.floor(w / 32), Math.floor(h / 30)) / 2));
}

/** The code box { b, width, height } for a W x H picture, or null when no code fits. */
export function codeBox(w, h) {
  const b = blockSize(w, h);
  if (w < 31 * b || h < 6 * b) return null;
  return { b, width: 26 * b, height: 6 * b };
}

/** CRC-8/AUTOSAR (poly 0x2F, init 0xFF, xorout 0xFF). */
export function crc8(bytes) {
  let crc = 0xff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 0x80 ? ((crc << 1) ^ 0x2f) & 0xff : (crc << 1) & 0xff;
  }
  return crc ^ 0xff;
}

/**
 * Read the code from RGBA pixels (a canvas ImageData's data) whose top-left is the picture's
 * top-left; `stride` is the width of that pixel buffer, `b` the block size.
 * Returns { frame, captureMs } or null ("no code" is a normal outcome).
 */
export function readCode(rgba, stride, b) {
  const half = b / 2;
  const cell = (r, c) => {
    const x0 = (c + 1) * b + half - 1;
    const y0 = (r + 1) * b + half - 1;
    let sum = 0;
    for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [1, 1]]) {
      const i = ((y0 + dy) * stride + x0 + dx) * 4;
      sum += rgba[i] + rgba[i + 1] + rgba[i + 2];
    }
    return Math.round(sum / 12) >= 128 ? 1 : 0;
  };
  for (let r = 0; r < 4; r++) {
    if (cell(r, 0) !== (r % 2 === 0 ? 1 : 0) || cell(r, 23) !== (r % 2 === 0 ? 0 : 1)) return null;
  }
  const bytes = new Array(11).fill(0);
  for (let i = 0; i < 88; i++) {
    if (cell(Math.floor(i / 22), 1 + (i % 22))) bytes[Math.floor(i / 8)] |= 0x80 >> (i % 8);
  }
  if (crc8(bytes.slice(0, 10)) !== bytes[10]) return null;
  const frame = ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0;
  let captureMs = 0;
  for (let k = 4; k < 10; k++) captureMs = captureMs * 256 + bytes[k];
  return { frame, captureMs };
}
