// A WHEP endpoint answered by Janus, only to prove the WHEP viewer (whep-viewer.mjs) against a
// working endpoint before spyglass has one. No WHEP server can be installed here (mediamtx and
// go2rtc are not in Debian), and Janus 1.1.2's VideoRoom and Streaming plugins make the offer
// themselves, so they cannot answer a WHEP client's offer. Its VideoCall plugin can: it relays
// the caller's offer to the callee and the callee's answer back. Here the WHEP client is the
// caller and a Chromium page sending /picture.js's canvas and tone is the callee ("camera"), so
// the answer, its candidates (127.0.0.1) and the media all come from Janus.
//
// `POST /whep` (application/sdp offer) → 201 with Janus's answer, `Location: /whep/ID`, `ETag`
// and the configured `Link` headers; `PATCH /whep/ID` (application/trickle-ice-sdpfrag) → 204,
// loopback candidates go to Janus; `DELETE /whep/ID` → 200. One viewer at a time (VideoCall is
// one to one): a second POST gets 503. Optional bearer token. Listens on 127.0.0.1.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { candidateAddress, isLoopback, parseSdpFrag, sdpMids } from './whip-frontend.mjs';

export class JanusWhepEndpoint {
  /**
   * Options: `janus` (started with the 'videocall' plugin), `context` (a browser context for the
   * camera page), `pages` (a PageServer), `token`, `links` (Link header values).
   */
  static async start({ janus, context, pages, token = null, links = [] }) {
    const e = new JanusWhepEndpoint();
    Object.assign(e, { janus, context, pages, token, links, viewer: null, requests: [] });
    e.camera = await e.startCamera();
    e.server = http.createServer((req, res) => {
      e.handle(req, res).catch((err) => {
        if (!res.headersSent) {
          res.writeHead(500);
          res.end(String(err.message ?? err));
        }
      });
    });
    await new Promise((r) => e.server.listen(0, '127.0.0.1', r));
    e.url = `http://127.0.0.1:${e.server.address().port}/whep`;
    return e;
  }

  /** The callee: a Chromium page registered in VideoCall that answers each call with its picture. */
  async startCamera() {
    const page = await this.context.newPage();
    await page.goto(this.pages.blank);
    const session = await this.janus.session();
    const handle = await session.attach('janus.plugin.videocall');
    const name = `camera-${randomBytes(4).toString('hex')}`;
    await handle.message({ request: 'register', username: name });
    handle.on('event', async (ev) => {
      if (ev.plugindata?.data?.result?.event !== 'incomingcall' || !ev.jsep) return;
      const answer = await page.evaluate(async ({ offer, origin }) => {
        const { pictureStream } = await import(`${origin}/picture.js`);
        window.stream ??= pictureStream(320, 240);
        window.pc?.close();
        const pc = new RTCPeerConnection();
        window.pc = pc;
        await pc.setRemoteDescription(offer);
        for (const t of pc.getTransceivers()) {
          const track = window.stream.getTracks().find((x) => x.kind === t.receiver.track.kind);
          if (!track) continue;
          t.direction = 'sendonly';
          await t.sender.replaceTrack(track);
          t.sender.setStreams(window.stream);
        }
        await pc.setLocalDescription(await pc.createAnswer());
        return { type: 'answer', sdp: pc.localDescription.sdp };
      }, { offer: ev.jsep, origin: this.pages.origin });
      await handle.message({ request: 'accept' }, answer);
      // Chromium's candidates are mDNS names: Janus learns the page's address from its checks.
      await handle.trickle({ completed: true });
    });
    return { page, session, handle, name };
  }

  async handle(req, res) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks).toString('utf8');
    const path = new URL(req.url, this.url).pathname;
    this.requests.push({ method: req.method, path });
    const send = (status, headers = {}, text = '') => {
      res.writeHead(status, {
        'access-control-allow-origin': '*',
        'access-control-expose-headers': 'Location, Link, ETag',
        ...headers,
      });
      res.end(text);
    };
    if (req.method === 'OPTIONS') {
      return send(204, {
        'access-control-allow-methods': 'POST, PATCH, DELETE, OPTIONS',
        'access-control-allow-headers': 'Authorization, Content-Type, If-Match',
      });
    }
    if (this.token && req.headers.authorization !== `Bearer ${this.token}`) return send(401, { 'www-authenticate': 'Bearer' });
    if (path === '/whep' && req.method === 'POST') {
      if (!/^application\/sdp\b/i.test(req.headers['content-type'] ?? '')) return send(415);
      if (this.viewer) return send(503, {}, 'one viewer at a time');
      const id = randomBytes(8).toString('hex');
      const session = await this.janus.session();
      this.viewer = { id, session, mids: sdpMids(body) };
      try {
        const handle = await session.attach('janus.plugin.videocall');
        this.viewer.handle = handle;
        await handle.message({ request: 'register', username: `viewer-${id}` });
        const accepted = new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('the camera did not answer')), 15000);
          handle.on('event', (ev) => {
            const event = ev.plugindata?.data?.result?.event;
            if (event === 'accepted' && ev.jsep) {
              clearTimeout(timer);
              resolve(ev.jsep);
            } else if (event === 'hangup') {
              clearTimeout(timer);
              reject(new Error(`hangup: ${ev.plugindata.data.result.reason}`));
            }
          });
        });
        await handle.message({ request: 'call', username: this.camera.name }, { type: 'offer', sdp: body });
        const answer = await accepted;
        const headers = { 'content-type': 'application/sdp', location: `/whep/${id}`, etag: `"${id}"` };
        if (this.links.length) headers.link = this.links.join(', ');
        return send(201, headers, answer.sdp);
      } catch (err) {
        await this.endViewer();
        return send(502, {}, String(err.message ?? err));
      }
    }
    const id = path.split('/')[2];
    if (!this.viewer || id !== this.viewer.id || !/^\/whep\/[0-9a-f]{16}$/.test(path)) return send(404);
    if (req.method === 'PATCH') {
      if (!/^application\/trickle-ice-sdpfrag\b/i.test(req.headers['content-type'] ?? '')) return send(415);
      const frag = parseSdpFrag(body);
      const forward = frag.candidates
        .filter((c) => isLoopback(candidateAddress(c.candidate)))
        .map((c) => ({ ...c, sdpMLineIndex: Math.max(0, this.viewer.mids.indexOf(c.sdpMid)) }));
      if (forward.length) await this.viewer.handle.trickle(forward);
      if (frag.ended) await this.viewer.handle.trickle({ completed: true });
      return send(204);
    }
    if (req.method === 'DELETE') {
      await this.endViewer();
      return send(200);
    }
    return send(405);
  }

  async endViewer() {
    const v = this.viewer;
    this.viewer = null;
    if (!v) return;
    if (v.handle) await v.handle.message({ request: 'hangup' }).catch(() => {});
    await v.session.destroy();
  }

  async close() {
    await this.endViewer();
    await this.camera.session.destroy();
    await this.camera.page.close().catch(() => {});
    const closed = new Promise((r) => this.server.close(r));
    this.server.closeAllConnections();
    await closed;
  }
}
