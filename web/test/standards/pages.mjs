// Chromium peers for the standards tests, all on 127.0.0.1: a small page server (the WHIP/WHEP
// clients of the `whip-whep` npm package and a blank page with a <video>), a WHIP publisher
// (canvas video with a known picture, WebAudio tone), VideoRoom subscribers that receive a feed
// from Janus, and a watcher that reports publishers as they appear in a room.

import http from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { webDir } from '../harness.mjs';
import { candidateAddress, isLoopback } from './whip-frontend.mjs';
import { ensureRoom } from './janus.mjs';

const BLANK = '<!doctype html><meta charset="utf-8"><title>standards peer</title>' +
  '<video id="video" autoplay muted playsinline></video>';

/** The colours of the sending pages' picture: left half, right half (RGB). */
export const PICTURE = { left: [230, 30, 30], right: [30, 30, 230] };

// /picture.js, for the pages that send: a MediaStream with a canvas video track (left half
// PICTURE.left, right half PICTURE.right, a white square moving along the bottom, 30 fps) and a
// 440 Hz WebAudio tone.
const PICTURE_JS = `
export function pictureStream(width, height) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  document.body.append(canvas);
  const ctx = canvas.getContext('2d');
  let n = 0;
  const draw = () => {
    ctx.fillStyle = 'rgb(${PICTURE.left})';
    ctx.fillRect(0, 0, width / 2, height);
    ctx.fillStyle = 'rgb(${PICTURE.right})';
    ctx.fillRect(width / 2, 0, width / 2, height);
    ctx.fillStyle = '#fff';
    ctx.fillRect((n * 4) % width, height - 16, 16, 16);
    n++;
  };
  draw();
  setInterval(draw, 33);
  const stream = canvas.captureStream(30);
  const audio = new AudioContext();
  const osc = audio.createOscillator();
  osc.frequency.value = 440;
  const dest = audio.createMediaStreamDestination();
  osc.connect(dest);
  osc.start();
  stream.addTrack(dest.stream.getAudioTracks()[0]);
  return stream;
}
`;

// /exchanges.js: record every fetch() of the page (the WHIP/WHEP clients' HTTP exchanges) as
// { method, url, at (wall clock, ms), status, location, link, etag, content-type } or { error }.
const EXCHANGES_JS = `
export function recordExchanges() {
  const exchanges = [];
  const fetch0 = window.fetch.bind(window);
  window.fetch = async (u, init = {}) => {
    const x = { method: init.method ?? 'GET', url: String(u), at: Date.now() };
    exchanges.push(x);
    try {
      const r = await fetch0(u, init);
      x.status = r.status;
      for (const h of ['location', 'link', 'etag', 'content-type']) {
        const v = r.headers.get(h);
        if (v !== null) x[h] = v;
      }
      return r;
    } catch (e) {
      x.error = String(e.message ?? e);
      throw e;
    }
  };
  return exchanges;
}
`;

/** Serves /blank.html, /whip.js and /whep.js (the whip-whep package) on 127.0.0.1. */
export class PageServer {
  static async start() {
    const s = new PageServer();
    const lib = join(webDir, 'node_modules', 'whip-whep');
    const files = {
      '/blank.html': ['text/html', BLANK],
      '/whip.js': ['text/javascript', readFileSync(join(lib, 'whip.js'), 'utf8')],
      '/whep.js': ['text/javascript', readFileSync(join(lib, 'whep.js'), 'utf8')],
      '/picture.js': ['text/javascript', PICTURE_JS],
      '/exchanges.js': ['text/javascript', EXCHANGES_JS],
    };
    s.server = http.createServer((req, res) => {
      const f = files[new URL(req.url, 'http://x').pathname];
      if (!f) {
        res.writeHead(404);
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': f[0], 'cache-control': 'no-store' });
      res.end(f[1]);
    });
    await new Promise((r) => s.server.listen(0, '127.0.0.1', r));
    s.origin = `http://127.0.0.1:${s.server.address().port}`;
    return s;
  }

  get blank() { return `${this.origin}/blank.html`; }

  async close() {
    const closed = new Promise((r) => this.server.close(r));
    this.server.closeAllConnections();
    await closed;
  }
}

/**
 * Publish from Chromium to a WHIP endpoint with whip-whep's WHIPClient: /picture.js's stream
 * (`width`x`height` canvas and a tone). Returns `{ page, postAt, exchanges(),
 * connectionState(), stop() }`: `postAt` is the wall-clock time (ms) of the client's POST.
 * Throws the client's error when the endpoint refuses.
 */
export async function publishWhip(context, pages, { url, token, width = 320, height = 240 }) {
  const page = await context.newPage();
  await page.goto(pages.blank);
  const result = await page.evaluate(async ({ url, token, width, height, origin }) => {
    const { WHIPClient } = await import(`${origin}/whip.js`);
    window.exchanges = (await import(`${origin}/exchanges.js`)).recordExchanges();
    const { pictureStream } = await import(`${origin}/picture.js`);
    const stream = pictureStream(width, height);
    const pc = new RTCPeerConnection();
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    window.pc = pc;
    window.whip = new WHIPClient();
    try {
      await window.whip.publish(pc, url, token);
    } catch (e) {
      return { error: String(e.message ?? e) };
    }
    const post = window.exchanges.find((x) => x.method === 'POST');
    return { postAt: post.at };
  }, { url, token, width, height, origin: pages.origin });
  if (result.error) {
    await page.close();
    throw new Error(result.error);
  }
  return {
    page,
    postAt: result.postAt,
    exchanges: () => page.evaluate(() => window.exchanges),
    connectionState: () => page.evaluate(() => window.pc.connectionState),
    /** whip-whep's stop(): closes the peer connection and DELETEs the session. */
    async stop() {
      await page.evaluate(() => window.whip.stop()).catch(() => {});
      await page.close();
    },
  };
}

/**
 * Report publishers of VideoRoom `room` as they appear, like a page waiting for a camera: a
 * participant that joins without publishing. `next()` resolves with the next new feed id.
 */
export async function watchRoom(janus, room, roomOptions = {}) {
  const session = await janus.session();
  const handle = await session.attach('janus.plugin.videoroom');
  const seen = [];
  const waiting = [];
  const queue = [];
  const offer = (list) => {
    for (const p of list ?? []) {
      if (seen.includes(p.id)) continue;
      seen.push(p.id);
      const w = waiting.shift();
      if (w) w(p.id);
      else queue.push(p.id);
    }
  };
  handle.on('event', (e) => offer(e.plugindata?.data?.publishers));
  await ensureRoom(handle, room, roomOptions);
  const { data } = await handle.message({ request: 'join', room, ptype: 'publisher', display: 'watcher' });
  offer(data.publishers);
  return {
    next: () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r))),
    close: () => session.destroy(),
  };
}

/**
 * A Chromium page that subscribes to `feed` of VideoRoom `room` (Janus offers, the page
 * answers). Returns `{ page, stats(), pixels(), close() }`; `stats()` gives framesDecoded,
 * the video's size, the wall-clock time of the first frame shown and audio packets received.
 */
export async function subscribeJanus(context, pages, janus, room, feed) {
  const page = await context.newPage();
  await page.goto(pages.blank);
  const session = await janus.session();
  const handle = await session.attach('janus.plugin.videoroom');
  const { jsep } = await handle.message({ request: 'join', room, ptype: 'subscriber', streams: [{ feed }] });
  const answer = await page.evaluate(async (offer) => {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    window.candidates = [];
    pc.onicecandidate = (e) => { if (e.candidate) window.candidates.push(e.candidate.toJSON()); };
    const video = document.getElementById('video');
    pc.ontrack = (e) => {
      if (e.track.kind !== 'video') return;
      video.srcObject = new MediaStream([e.track]);
      video.requestVideoFrameCallback(() => { window.firstFrameAt = Date.now(); });
    };
    await pc.setRemoteDescription(offer);
    const a = await pc.createAnswer();
    await pc.setLocalDescription(a);
    return { type: 'answer', sdp: pc.localDescription.sdp };
  }, jsep);
  await handle.message({ request: 'start' }, answer);
  // Chromium hides its addresses behind mDNS names; only loopback candidates go to Janus.
  const forward = (await page.evaluate(() => window.candidates))
    .filter((c) => isLoopback(candidateAddress(c.candidate)));
  if (forward.length) await handle.trickle(forward);
  await handle.trickle({ completed: true });
  return {
    page,
    async stats() {
      return page.evaluate(async () => {
        const out = { framesDecoded: 0, audioPackets: 0 };
        (await window.pc.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') {
            out.framesDecoded = s.framesDecoded ?? 0;
            out.frameWidth = s.frameWidth;
            out.frameHeight = s.frameHeight;
          }
          if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
        });
        const v = document.getElementById('video');
        out.videoWidth = v.videoWidth;
        out.videoHeight = v.videoHeight;
        out.firstFrameAt = window.firstFrameAt ?? null;
        out.connectionState = window.pc.connectionState;
        return out;
      });
    },
    /** The decoded RGB at (x, y) of the video, as the browser draws it. */
    async pixel(x, y) {
      return page.evaluate(([x, y]) => {
        const v = document.getElementById('video');
        const c = document.createElement('canvas');
        c.width = v.videoWidth;
        c.height = v.videoHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(v, 0, 0);
        return Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
      }, [x, y]);
    },
    async close() {
      await page.close().catch(() => {});
      await session.destroy();
    },
  };
}
