// The tests' own reader of the test pattern's code, written from docs/TEST_PATTERN.md apart from
// the page's (web/src/pattern.js), so that a mistake in one does not hide in the other. It looks
// at the green channel only, which the contract allows.

export function readCodeFromGreen(rgba, stride, width, height) {
  const B = Math.max(4, 2 * Math.floor(Math.min(Math.floor(width / 32), Math.floor(height / 30)) / 2));
  if (width < 31 * B || height < 6 * B) return null;
  const bit = (row, col) => {
    const x = (col + 1) * B + B / 2 - 1;
    const y = (row + 1) * B + B / 2 - 1;
    const g = (xx, yy) => rgba[(yy * stride + xx) * 4 + 1];
    return (g(x, y) + g(x + 1, y) + g(x, y + 1) + g(x + 1, y + 1) + 2) >> 2 >= 128 ? 1 : 0;
  };
  const markers = [0, 1, 2, 3].every((r) => bit(r, 0) === 1 - (r & 1) && bit(r, 23) === (r & 1));
  if (!markers) return null;
  const payload = [];
  for (let i = 0; i < 88; i++) payload.push(bit(Math.floor(i / 22), 1 + (i % 22)));
  const bytes = [];
  for (let k = 0; k < 11; k++) bytes.push(payload.slice(8 * k, 8 * k + 8).reduce((a, b) => a * 2 + b, 0));
  let crc = 0xff;
  for (const byte of bytes.slice(0, 10)) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 0x80 ? ((crc << 1) ^ 0x2f) & 0xff : (crc << 1) & 0xff;
  }
  if ((crc ^ 0xff) !== bytes[10]) return null;
  const be = (from, to) => bytes.slice(from, to).reduce((a, b) => a * 256 + b, 0);
  return { frame: be(0, 4), captureMs: be(4, 10), B };
}
