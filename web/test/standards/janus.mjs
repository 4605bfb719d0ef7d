// A real SFU for the tests: Debian's Janus (1.1.2) as a private process on 127.0.0.1, with only
// the VideoRoom plugin (and VideoCall when asked) and the HTTP transport, and a client for
// Janus's HTTP API (https://janus.conf.meetecho.com/docs/rest.html).
//
// Why the HTTP API and not the `janode` npm package: janode 1.8 pulls in `unix-dgram`, a native
// addon built with node-gyp at `npm ci`, and `make web` (which every user building the viewer
// page runs, Pis included) would then compile it; the HTTP API needs nothing but fetch.
//
// Loopback only: Janus's HTTP server binds 127.0.0.1; its ICE agent would skip the loopback
// interface (src/ice.c, "Skip loopback interfaces"), so the process gets a getifaddrs() that
// shows it 127.0.0.1 only (loopback-ifaddrs.c, LD_PRELOAD); mDNS candidates are ignored
// (`ignore_mdns`), no STUN or TURN server is configured, IPv6 is off. The process is stopped by
// its PID.

import { spawn, execFileSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import {
  mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync, openSync, readFileSync, existsSync, readdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, sleep } from '../harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** Where Debian installs Janus's plugins and transports (/usr/lib/<multiarch>/janus). */
function janusLibDir() {
  for (const d of readdirSync('/usr/lib')) {
    const dir = join('/usr/lib', d, 'janus');
    if (existsSync(join(dir, 'plugins', 'libjanus_videoroom.so'))) return dir;
  }
  throw new Error('Janus is not installed (Debian package `janus`: make deps)');
}

/** A Janus API error (`{"janus":"error"}` or a plugin's `error_code`). */
export class JanusError extends Error {
  constructor(code, reason) {
    super(`Janus error ${code}: ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

export class Janus {
  /**
   * Start a private Janus. Options: `plugins` (default ['videoroom']; 'videocall' too for
   * whep-endpoint.mjs), `debugLevel` (0-7, default 4), `sessionTimeout` (s, 60). Resolves once its
   * HTTP API answers `info`.
   */
  static async start(options = {}) {
    const j = new Janus();
    j.dir = mkdtempSync(join(tmpdir(), 'spyglass-janus-'));
    j.port = await freePort();
    const lib = janusLibDir();
    const dirs = {};
    for (const d of ['conf', 'plugins', 'transports', 'events', 'loggers']) {
      dirs[d] = join(j.dir, d);
      mkdirSync(dirs[d]);
    }
    // Only what the tests use: Janus loads every library in these folders.
    for (const p of options.plugins ?? ['videoroom']) {
      symlinkSync(`${lib}/plugins/libjanus_${p}.so`, join(dirs.plugins, `libjanus_${p}.so`));
    }
    symlinkSync(`${lib}/transports/libjanus_http.so`, join(dirs.transports, 'libjanus_http.so'));
    j.shim = join(j.dir, 'loopback-ifaddrs.so');
    execFileSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-o', j.shim, join(here, 'loopback-ifaddrs.c')]);

    writeFileSync(join(dirs.conf, 'janus.jcfg'), `general: {
  configs_folder = "${dirs.conf}"
  plugins_folder = "${dirs.plugins}"
  transports_folder = "${dirs.transports}"
  events_folder = "${dirs.events}"
  loggers_folder = "${dirs.loggers}"
  debug_level = ${options.debugLevel ?? 4}
  interface = "127.0.0.1"
  server_name = "spyglass-test-sfu"
  session_timeout = ${options.sessionTimeout ?? 60}
}
media: {
  ipv6 = false
}
nat: {
  nice_debug = false
  ignore_mdns = true
  ice_enforce_list = "127.0.0.1"
}
plugins: {
}
transports: {
}
events: {
  broadcast = false
}
`);
    writeFileSync(join(dirs.conf, 'janus.transport.http.jcfg'), `general: {
  json = "plain"
  base_path = "/janus"
  http = true
  port = ${j.port}
  ip = "127.0.0.1"
  https = false
}
admin: {
  admin_http = false
  admin_https = false
}
`);
    // String room ids, so that a WHIP path's room name is the room's id.
    writeFileSync(join(dirs.conf, 'janus.plugin.videoroom.jcfg'), 'general: {\n  string_ids = true\n}\n');
    j.confDir = dirs.conf;
    await j.run();
    return j;
  }

  async run() {
    this.logFile = join(this.dir, `janus-${Date.now()}.log`);
    const log = openSync(this.logFile, 'w');
    this.child = spawn('janus', ['-F', this.confDir, '-o'], {
      stdio: ['ignore', log, log],
      env: { ...process.env, LD_PRELOAD: this.shim },
    });
    this.exited = new Promise((r) => this.child.once('exit', r));
    const end = Date.now() + 15000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`janus exited at start:\n${this.log()}`);
      try {
        const info = await this.info();
        if (info.janus === 'server_info') {
          this.version = info.version_string;
          return;
        }
      } catch {
        // not listening yet
      }
      if (Date.now() > end) throw new Error(`janus did not answer on ${this.url}:\n${this.log()}`);
      await sleep(50);
    }
  }

  /** The HTTP API's base URL, http://127.0.0.1:PORT/janus. */
  get url() { return `http://127.0.0.1:${this.port}/janus`; }

  async info() {
    const r = await fetch(this.url.replace(/\/janus$/, '/janus/info'));
    return r.json();
  }

  /** A new API session (one long-poll loop each). */
  async session() {
    return JanusSession.create(this.url);
  }

  log() { return this.logFile && existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : ''; }

  /** SIGTERM by PID, SIGKILL after 3 s. */
  async stop() {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(timer);
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let transactions = 0;
const transaction = () => `t${++transactions}-${Math.random().toString(36).slice(2, 8)}`;

/** One Janus API session over HTTP: requests by POST, events by long poll. */
export class JanusSession extends EventEmitter {
  static async create(base) {
    const s = new JanusSession();
    s.base = base;
    const r = await s.post(base, { janus: 'create' });
    s.id = r.data.id;
    s.url = `${base}/${s.id}`;
    s.handles = new Map();
    s.waiters = new Map();
    s.abort = new AbortController();
    s.closed = false;
    s.poll();
    return s;
  }

  async post(url, body) {
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ transaction: transaction(), ...body }),
    });
    const json = await r.json();
    if (json.janus === 'error') throw new JanusError(json.error?.code, json.error?.reason);
    return json;
  }

  /**
   * The long-poll loop: each event goes to the waiter of its transaction or to its handle. It
   * ends when the session is destroyed, or when Janus stays unreachable for 2 s (stopped), so a
   * test that failed before destroying a session does not keep node running.
   */
  async poll() {
    let failures = 0;
    while (!this.closed) {
      let events;
      try {
        const r = await fetch(`${this.url}?maxev=10&rid=${Date.now()}`, { signal: this.abort.signal });
        events = await r.json();
        failures = 0;
      } catch {
        if (this.closed) return;
        if (++failures > 20) {
          this.closed = true;
          this.emit('gone');
          return;
        }
        await sleep(100);
        continue;
      }
      for (const e of Array.isArray(events) ? events : [events]) this.dispatch(e);
    }
  }

  dispatch(e) {
    if (e.janus === 'keepalive') return;
    if (e.janus === 'error' && e.error?.code === 458) {
      // No such session (destroyed or timed out).
      this.closed = true;
      this.emit('gone');
      return;
    }
    const waiter = e.transaction && this.waiters.get(e.transaction);
    if (waiter && e.janus === 'event') {
      this.waiters.delete(e.transaction);
      waiter(e);
      return;
    }
    this.handles.get(e.sender)?.emit(e.janus, e);
  }

  async attach(plugin = 'janus.plugin.videoroom') {
    const r = await this.post(this.url, { janus: 'attach', plugin });
    const h = new JanusHandle(this, r.data.id);
    this.handles.set(h.id, h);
    return h;
  }

  async destroy() {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.post(this.url, { janus: 'destroy' });
    } catch {
      // already gone
    }
    this.abort.abort();
  }
}

/** A handle on a plugin: synchronous requests, asynchronous messages, trickle. */
export class JanusHandle extends EventEmitter {
  constructor(session, id) {
    super();
    this.session = session;
    this.id = id;
    this.url = `${session.url}/${id}`;
  }

  /** A request the plugin answers at once (create, exists, listparticipants...): its data. */
  async request(body) {
    const r = await this.session.post(this.url, { janus: 'message', body });
    const data = r.plugindata?.data ?? {};
    if (data.error_code) throw new JanusError(data.error_code, data.error);
    return data;
  }

  /**
   * A request the plugin answers later (join, joinandconfigure, start...): `{ data, jsep }` of
   * the event that carries its transaction.
   */
  async message(body, jsep, timeoutMs = 15000) {
    const tx = transaction();
    let timer;
    const event = new Promise((resolve, reject) => {
      timer = setTimeout(() => {
        this.session.waiters.delete(tx);
        reject(new Error(`Janus did not answer ${JSON.stringify(body)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.session.waiters.set(tx, resolve);
    });
    let e;
    try {
      const r = await this.session.post(this.url, { janus: 'message', transaction: tx, body, ...(jsep ? { jsep } : {}) });
      e = r.janus === 'success' ? r : await event;
    } finally {
      clearTimeout(timer);
      this.session.waiters.delete(tx);
    }
    const data = e.plugindata?.data ?? {};
    if (data.error_code) throw new JanusError(data.error_code, data.error);
    return { data, jsep: e.jsep };
  }

  /** Trickle one candidate `{candidate, sdpMid, sdpMLineIndex}`, a list of them, or `{completed: true}`. */
  async trickle(c) {
    const body = Array.isArray(c) ? { candidates: c } : { candidate: c };
    await this.session.post(this.url, { janus: 'trickle', ...body });
  }

  async detach() {
    this.session.handles.delete(this.id);
    try {
      await this.session.post(this.url, { janus: 'detach' });
    } catch {
      // already gone
    }
  }
}

/** Make the VideoRoom `room` unless it exists. H.264 first (spyglass sends H.264), then VP8. */
export async function ensureRoom(handle, room, options = {}) {
  const { exists } = await handle.request({ request: 'exists', room });
  if (exists) return;
  try {
    await handle.request({
      request: 'create',
      room,
      description: `spyglass test room ${room}`,
      publishers: options.publishers ?? 8,
      videocodec: options.videocodec ?? 'h264,vp8',
      audiocodec: options.audiocodec ?? 'opus',
      // Ask the publisher for a keyframe every 2 s at most, and at once for each new subscriber.
      fir_freq: 2,
      notify_joining: true,
    });
  } catch (e) {
    // Made by a concurrent request meanwhile: fine.
    if (!(e instanceof JanusError && e.code === 427)) throw e;
  }
}
