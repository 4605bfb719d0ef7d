// Real parts for the browser tests: a private Mosquitto (MQTT and WebSocket listeners, both on
// 127.0.0.1), a real spyglass process serving the page, and Debian's headless Chromium driven
// by playwright-core. Every process is ended by its PID.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync, openSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { before, after } from 'node:test';
import { chromium } from 'playwright-core';

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const repoDir = resolve(webDir, '..');
export const distDir = join(webDir, 'dist');

/** The spyglass binary: $SPYGLASS_BIN (the Makefile sets it), else cargo's target directory. */
export function spyglassBin() {
  if (process.env.SPYGLASS_BIN) return process.env.SPYGLASS_BIN;
  const meta = JSON.parse(
    execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: repoDir, encoding: 'utf8' }),
  );
  return join(meta.target_directory, 'debug', 'spyglass');
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitForPort(port, timeoutMs = 10000) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1');
      s.on('connect', () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    });
    if (ok) return;
    await sleep(30);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

/** Poll `fn` until it returns a truthy value; fail with `what` after `timeoutMs`. */
export async function until(what, fn, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** End a child by PID: SIGTERM, then SIGKILL after a grace period. */
async function stop(child, graceMs = 3000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

export class Broker {
  static async start() {
    const b = new Broker();
    b.dir = mkdtempSync(join(tmpdir(), 'spyglass-web-broker-'));
    b.port = await freePort();
    b.wsPort = await freePort();
    // socket_domain ipv4: without it Mosquitto 2.0.11's websockets listener ignores its bind
    // address and listens on every interface.
    writeFileSync(join(b.dir, 'mosquitto.conf'), [
      'persistence false',
      'allow_anonymous true',
      `listener ${b.port} 127.0.0.1`,
      'protocol mqtt',
      `listener ${b.wsPort} 127.0.0.1`,
      'socket_domain ipv4',
      'protocol websockets',
      '',
    ].join('\n'));
    await b.run();
    return b;
  }

  async run() {
    this.child = spawn('mosquitto', ['-c', join(this.dir, 'mosquitto.conf')], { stdio: 'ignore' });
    await waitForPort(this.port);
    await waitForPort(this.wsPort);
  }

  get url() { return `mqtt://127.0.0.1:${this.port}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.wsPort}`; }

  async stop() {
    await stop(this.child);
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export class Spyglass {
  /** Options: video, size, maxViewers, webBrokerUrl, webRoot, httpPort, id, extra (argv). */
  static async start(broker, options = {}) {
    const s = new Spyglass();
    s.broker = broker;
    s.id = options.id ?? `web/cam-${Math.floor(Math.random() * 1e9)}`;
    s.httpPort = options.httpPort ?? (await freePort());
    s.dir = mkdtempSync(join(tmpdir(), 'spyglass-web-daemon-'));
    s.args = [
      '--id', s.id,
      '--mqtt', broker.url,
      '--video', options.video ?? 'test',
      '--size', options.size ?? '352x288',
      '--bitrate', '600',
      '--max-viewers', String(options.maxViewers ?? 4),
      '--rtc-bind', '127.0.0.1',
      '--rtc-allow-loopback', 'on',
      '--mdns', 'off',
      '--http', `127.0.0.1:${s.httpPort}`,
      '--web-root', options.webRoot ?? distDir,
      '--web-broker-url', options.webBrokerUrl ?? broker.wsUrl,
      ...(options.extra ?? []),
    ];
    await s.run();
    return s;
  }

  async run() {
    if (!existsSync(join(distDir, 'index.html'))) throw new Error(`${distDir} has no page: run \`make web\``);
    this.logFile = join(this.dir, `spyglass-${Date.now()}.log`);
    const log = openSync(this.logFile, 'w');
    this.child = spawn(spyglassBin(), this.args, {
      stdio: ['ignore', 'ignore', log],
      env: { ...process.env, RUST_LOG: process.env.SPYGLASS_LOG ?? 'spyglass=debug,info' },
    });
    await waitForPort(this.httpPort);
  }

  get pageUrl() { return `http://127.0.0.1:${this.httpPort}/`; }

  log() { return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : ''; }

  /** SIGKILL: no clean stop, so the broker publishes the last will. */
  async kill() {
    if (this.child && this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGKILL');
      await exited;
    }
  }

  async close() {
    await stop(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Headless Chromium from Debian with a fresh profile; `args`: more command-line switches. */
export async function launchBrowser({ args = [] } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'spyglass-web-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 960, height: 600 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Loopback ICE candidates, so media stays on 127.0.0.1.
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      ...args,
    ],
  });
  return {
    context,
    async close() {
      // Closing the context ends the Chromium process that playwright started.
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * For a test file: clean-ups that run (last first) after all its tests and, with
 * `{ browser: true }`, one headless Chromium (`fixture.browser`) launched before them and closed
 * after the clean-ups.
 */
export function fileFixture({ browser = false, browserArgs = [] } = {}) {
  const fixture = { cleanups: [], browser: null };
  if (browser) {
    before(async () => {
      fixture.browser = await launchBrowser({ args: browserArgs });
    });
  }
  after(async () => {
    for (const fn of fixture.cleanups.reverse()) await fn().catch(() => {});
    await fixture.browser?.close();
  });
  return fixture;
}

/** The inbound-rtp stats of `kind` ('audio' or 'video') of the page's current peer connection, or null. */
export async function inboundStats(page, kind) {
  return page.evaluate(async (kind) => {
    const pc = window.spyglass && window.spyglass.pc;
    if (!pc) return null;
    let inbound = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === kind) inbound = s;
    });
    return inbound;
  }, kind);
}

/** Inbound video stats of the page's current peer connection, or null. */
export async function videoStats(page) {
  const inbound = await inboundStats(page, 'video');
  if (!inbound) return null;
  const v = await page.evaluate(() => {
    const v = document.getElementById('video');
    return { videoWidth: v.videoWidth, videoHeight: v.videoHeight };
  });
  return {
    framesDecoded: inbound.framesDecoded ?? 0,
    frameWidth: inbound.frameWidth,
    frameHeight: inbound.frameHeight,
    videoWidth: v.videoWidth,
    videoHeight: v.videoHeight,
  };
}

/** The top-left `w` x `h` RGBA pixels of the video as the browser decoded them. */
export async function videoPixels(page, w, h) {
  return page.evaluate(([w, h]) => {
    const v = document.getElementById('video');
    const c = document.createElement('canvas');
    c.width = w;
    c.height = h;
    const ctx = c.getContext('2d');
    ctx.drawImage(v, 0, 0, w, h, 0, 0, w, h);
    return Array.from(ctx.getImageData(0, 0, w, h).data);
  }, [w, h]);
}

export function screenshotDir() {
  const dir = join(repoDir, 'target', 'web-test');
  mkdirSync(dir, { recursive: true });
  return dir;
}
