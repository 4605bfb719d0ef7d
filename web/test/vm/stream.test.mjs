// The emulated board streams for real (issue 16): Debian's kernel under QEMU, with the vivid
// camera driver, runs the spyglass daemon as a host on a netlab LAN (a tap on the LAN's bridge);
// outside the guest, in a namespace on the same LAN, headless Chromium opens the daemon's viewer
// page and plays it. The whole path: kernel V4L2 driver -> capture -> openh264 -> WebRTC -> a
// browser's decoder. (`spyglass view` watches the board in tests/board.rs.) Run by `make
// test-vm` (tests/vm/README.md).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Netlab } from '../netlab.mjs';
import { Board, lanPlace } from '../board.mjs';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { distDir, screenshotDir, spyglassBin, until, videoStats } from '../harness.mjs';

const WIDTH = 320;
const HEIGHT = 180;

function which(program) {
  return execFileSync('sh', ['-c', `command -v ${program}`], { encoding: 'utf8' }).trim();
}

/** Run `program args` in `node`'s namespace to its end: { code, stdout, stderr }. */
function runIn(lab, node, program, args) {
  return new Promise((resolve) => {
    const child = lab.spawn(node, program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * vivid's picture is its 75 % colour bars: white, yellow, cyan, green, magenta, red, blue,
 * black, left to right. The colour of each bar's centre on the middle row, as Chromium decoded it.
 */
async function barColours(page) {
  return page.evaluate(() => {
    const v = document.getElementById('video');
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(v, 0, 0);
    const y = Math.floor(c.height / 2);
    const bars = [];
    for (let i = 0; i < 8; i++) {
      const x = Math.floor(((i + 0.5) * c.width) / 8);
      bars.push(Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
    }
    return bars;
  });
}

const EXPECTED_BARS = [
  [1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0],
];

test('the board streams vivid to Chromium over a real network', async () => {
  const started = Date.now();
  const lab = Netlab.up({ sites: [{ name: 'lan', nat: 'cone' }], turn: false }, { check: 'basic' });
  let board;
  let browser;
  try {
    const place = lanPlace(lab, 'lan', 100);
    const id = `board-${process.pid}/cam`;
    const broker = lab.info.broker;
    board = Board.up({
      binary: spyglassBin(),
      files: [[distDir, '/test/web'], [which('v4l2-ctl'), '/test/v4l2-ctl']],
      net: place,
      run: [
        // vivid prints eight lines of text over its colour bars; keep the first (time and frame
        // counter), so the middle of the picture shows bare bars.
        'v4l2-ctl -d /dev/video0 -c osd_text_mode=1 || exit 1',
        `NO_COLOR=1 spyglass --id ${id} --mqtt ${broker.url} --video /dev/video0 ` +
          `--size ${WIDTH}x${HEIGHT} --fps 15 --rtc-bind ${place.ip} --mdns off --audio none ` +
          `--http ${place.ip}:8080 --web-root /test/web --web-broker-url ${broker.ws_url} ` +
          '2>/tmp/daemon.log &',
        'daemon=$!',
        'echo "=== ready"',
        'read -r line',
        'kill -TERM $daemon; wait $daemon; status=$?',
        'echo "=== daemon log"; tail -n 80 /tmp/daemon.log',
        'echo "=== daemon exit $status"',
        'exit $status',
      ].join('\n'),
    });
    const bootedAt = Date.now();
    console.log(`board up in ${((bootedAt - started) / 1000).toFixed(1)} s (netlab + boot; boot ${board.info.boot_s} s)`);

    // The daemon in the guest reaches the broker through the LAN's router.
    const online = await runIn(lab, 'lan', 'mosquitto_sub',
      ['-h', broker.host, '-p', String(broker.port), '-t', `${id}/status`, '-C', '1', '-W', '60']);
    assert.equal(online.code, 0, `no status from the board: ${online.stderr}\n${board.console()}`);
    assert.equal(JSON.parse(online.stdout).online, true, online.stdout);

    const viewedAt = Date.now();

    // Chromium, outside the guest: plays it, and its decoder shows vivid's colour bars.
    browser = await lab.launchBrowser('lan');
    const page = await browser.context.newPage();
    // The page comes from the daemon in the guest, as a user on the LAN would open it. (A page
    // from a made-up public origin may not open ws://10.0.0.1: Chromium's local network access
    // checks block it.)
    await page.goto(`http://${place.ip}:8080/?id=${encodeURIComponent(id)}`);
    await until('the page playing', async () => (await page.evaluate(() => window.spyglass?.state)) === 'live', 60000);
    const stats = await until('20 frames decoded by Chromium', async () => {
      const s = await videoStats(page);
      return s && s.framesDecoded >= 20 ? s : null;
    }, 60000);
    assert.deepEqual([stats.frameWidth, stats.frameHeight, stats.videoWidth, stats.videoHeight],
      [WIDTH, HEIGHT, WIDTH, HEIGHT]);
    const bars = await barColours(page);
    await page.locator('#video').screenshot({ path: join(screenshotDir(), 'board-stream.png') });
    const levels = bars.map((rgb) => rgb.map((c) => (c > 120 ? 1 : c < 70 ? 0 : null)));
    assert.deepEqual(levels, EXPECTED_BARS, `colour bars as decoded: ${JSON.stringify(bars)}`);
    console.log(`Chromium: ${stats.framesDecoded} frames ${stats.frameWidth}x${stats.frameHeight}, bars ${JSON.stringify(bars)}`);
    await browser.close();
    browser = null;
    const playedAt = Date.now();

    // The daemon stops cleanly when told.
    board.send('stop');
    const result = board.wait(120);
    assert.equal(result.exit, 0, `daemon in the guest:\n${result.console.slice(-4000)}`);
    assert.match(result.console, /=== daemon exit 0/);
    // Nothing of the board is left: its QEMU, its files (the tap goes with them).
    const { qemu } = JSON.parse(readFileSync(join(board.info.state_dir, 'pids.json'), 'utf8'));
    board.down();
    assert.ok(!existsSync(board.info.state_dir), board.info.state_dir);
    assert.ok(!existsSync(`/proc/${qemu}/cmdline`) || !readFileSync(`/proc/${qemu}/cmdline`, 'utf8').includes('qemu'),
      `QEMU (pid ${qemu}) outlived its board`);
    console.log(`times: netlab+boot ${((bootedAt - started) / 1000).toFixed(1)} s, online ${((viewedAt - bootedAt) / 1000).toFixed(1)} s, ` +
      `Chromium ${((playedAt - viewedAt) / 1000).toFixed(1)} s, stop ${((Date.now() - playedAt) / 1000).toFixed(1)} s, ` +
      `guest total ${result.total_s} s`);
  } finally {
    await browser?.close();
    board?.down();
    lab.down();
  }
});
