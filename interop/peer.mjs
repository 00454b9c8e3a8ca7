#!/usr/bin/env node
// Interop peer: drives ONE official realtime-js RealtimeClient from JSON-lines
// commands on stdin and reports everything it sees as JSON lines on stdout.
//
// Command (one JSON object per line):
//   {"id": 1, "cmd": "connect", "url": "ws://127.0.0.1:4000/realtime/v1",
//    "apikey": "<jwt>", "vsn": "2.0.0", "accessToken": "<jwt>"?, "trace": false?,
//    "timeout": 10000?, "heartbeatIntervalMs": 25000?, "heartbeatEvents": false?,
//    "reconnect": true?}
//   {"id": 2, "cmd": "channel", "topic": "room1", "config": {...}}
//   {"id": 3, "cmd": "on_broadcast", "topic": "room1", "event": "*"}
//   {"id": 4, "cmd": "on_presence", "topic": "room1"}
//   {"id": 5, "cmd": "on_system", "topic": "room1"}
//   {"id": 6, "cmd": "subscribe", "topic": "room1", "timeout": 10000?}
//   {"id": 7, "cmd": "send", "topic": "room1", "event": "e", "payload": {...}, "type": "broadcast"?}
//   {"id": 8, "cmd": "http_send", "topic": "room1", "event": "e", "payload": {...}}
//   {"id": 9, "cmd": "track", "topic": "room1", "payload": {...}}
//   {"id": 10, "cmd": "untrack", "topic": "room1"}
//   {"id": 11, "cmd": "presence_state", "topic": "room1"}
//   {"id": 12, "cmd": "unsubscribe", "topic": "room1"}
//   {"id": 13, "cmd": "set_auth", "token": "<jwt>"|null}
//   {"id": 14, "cmd": "state"}            (socket + channel states)
//   {"id": 15, "cmd": "disconnect"}
//   {"id": 16, "cmd": "exit"}
//   {"id": 17, "cmd": "on_postgres_changes", "topic": "room1", "label": "a",
//    "filter": {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"}}
//   {"id": 18, "cmd": "set_access_token_fn", "token": "<jwt>", "refresh": false?}
//        (changes what the `accessToken` callback returns; refresh: also call setAuth())
// Optional connect fields (added later; old behaviour without them):
//   "accessTokenFn": "<jwt>"   pass RealtimeClient the `accessToken` option, an async callback
//                              returning this value (changed by set_access_token_fn)
//   "tapFrames": true          report every frame the socket receives as
//                              {"type":"frame","binary":bool,"kind":N|null,"size":N,"hex":...,"text":...}
//
// Output (one JSON object per line, field "type"):
//   {"type":"ready"}                                         once, at start
//   {"type":"result","id":N,"ok":true,"result":...}          every command
//   {"type":"result","id":N,"ok":false,"error":"..."}
//   {"type":"status","topic":T,"status":"SUBSCRIBED"|"CHANNEL_ERROR"|"TIMED_OUT"|"CLOSED","error":msg|null}
//   {"type":"broadcast","topic":T,"event":E,"payload":<whole object the callback got>}
//   {"type":"presence","topic":T,"event":"sync"|"join"|"leave","key":K,"current":[..],"new"|"left":[..],"state":{..}}
//   {"type":"system","topic":T,"payload":{...}}
//   {"type":"heartbeat","status":"sent"|"ok"|"timeout"|...,"latency":ms}   only with heartbeatEvents
//   {"type":"socket","event":"open"|"close"|"error","code":N,"reason":S}
//   {"type":"message","message":{topic,event,payload,ref,join_ref}}   only with trace: true
//   {"type":"log","kind":K,"msg":M}                                  only with trace: true
//   {"type":"error","error":"..."}                                   anything unexpected
//   {"type":"postgres_changes","topic":T,"label":L,"payload":<what the callback got>}
//
// Binary payloads (ArrayBuffer / typed arrays) are reported as {"__binary__": "<hex>"}; the same
// form in a send/http_send payload is sent as an ArrayBuffer.

import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { RealtimeClient } from '@supabase/realtime-js';

// stdout is the event stream: keep library console output off it.
for (const name of ['log', 'info', 'debug', 'warn']) {
  const orig = console.error.bind(console);
  console[name] = (...args) => orig(`[console.${name}]`, ...args);
}

let client = null;
const channels = new Map(); // bare topic name -> RealtimeChannel
let trace = false;
let accessTokenFnValue = null; // what the `accessToken` callback returns (connect.accessTokenFn)

// A `ws` WebSocket that reports each received frame (connect.tapFrames).
class TapWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.on('message', (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.from(Array.isArray(data) ? Buffer.concat(data) : data);
      emit({
        type: 'frame',
        binary: !!isBinary,
        kind: isBinary ? buf[0] : null,
        size: buf.length,
        hex: isBinary ? buf.subarray(0, 4096).toString('hex') : null,
        text: isBinary ? null : buf.subarray(0, 4096).toString('utf8'),
      });
    });
  }
}

function toJsonSafe(value, depth = 0) {
  if (depth > 64) return '[depth]';
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof ArrayBuffer) {
    return { __binary__: Buffer.from(value).toString('hex') };
  }
  if (ArrayBuffer.isView(value)) {
    return { __binary__: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex') };
  }
  if (value instanceof Error) {
    const out = { name: value.name, message: value.message };
    if (value.cause !== undefined) out.cause = toJsonSafe(value.cause, depth + 1);
    return out;
  }
  if (Array.isArray(value)) return value.map((v) => toJsonSafe(v, depth + 1));
  if (typeof value === 'object') {
    // Close/Error events from `ws` are not plain objects.
    if (typeof value.type === 'string' && ('code' in value || 'reason' in value) && 'target' in value) {
      return { type: value.type, code: value.code ?? null, reason: String(value.reason ?? '') };
    }
    if ('target' in value && typeof value.type === 'string') {
      return { type: value.type, message: value.message ?? (value.error ? String(value.error) : null) };
    }
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      if (typeof v === 'function') continue;
      out[k] = toJsonSafe(v, depth + 1);
    }
    return out;
  }
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'function') return undefined;
  return value;
}

// {"__binary__": "<hex>"} in a command becomes an ArrayBuffer (binary broadcast payloads).
function fromJsonSafe(value) {
  if (value && typeof value === 'object' && !Array.isArray(value) && typeof value.__binary__ === 'string') {
    const buf = Buffer.from(value.__binary__, 'hex');
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  }
  return value;
}

function emit(obj) {
  let line;
  try {
    line = JSON.stringify(toJsonSafe(obj));
  } catch (e) {
    line = JSON.stringify({ type: 'error', error: `cannot serialize event: ${e && e.message}` });
  }
  process.stdout.write(line + '\n');
}

function errorMessage(err) {
  if (err === undefined || err === null) return null;
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(toJsonSafe(err));
  } catch {
    return String(err);
  }
}

function requireClient() {
  if (!client) throw new Error('not connected: send "connect" first');
  return client;
}

function requireChannel(topic) {
  const ch = channels.get(topic);
  if (!ch) throw new Error(`unknown channel "${topic}": send "channel" first`);
  return ch;
}

function withTimeout(promise, ms, label) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

const handlers = {
  async connect(cmd) {
    if (client) throw new Error('already connected (one client per peer process)');
    if (!cmd.url) throw new Error('connect: "url" is required');
    trace = !!cmd.trace;
    const options = {
      transport: cmd.tapFrames ? TapWebSocket : WebSocket,
      params: { apikey: cmd.apikey },
      vsn: cmd.vsn || '2.0.0',
      timeout: cmd.timeout ?? 10000,
    };
    if (cmd.accessTokenFn) {
      accessTokenFnValue = cmd.accessTokenFn;
      options.accessToken = async () => accessTokenFnValue;
    }
    if (cmd.heartbeatIntervalMs) options.heartbeatIntervalMs = cmd.heartbeatIntervalMs;
    if (cmd.reconnect === false) options.reconnectAfterMs = () => 24 * 3600 * 1000;
    if (trace) {
      options.logger = (kind, msg, data) => emit({ type: 'log', kind, msg, data: toJsonSafe(data) });
    }
    client = new RealtimeClient(cmd.url, options);
    if (cmd.accessToken) await client.setAuth(cmd.accessToken);
    client.socketAdapter.onOpen(() => emit({ type: 'socket', event: 'open' }));
    client.socketAdapter.onClose((ev) =>
      emit({ type: 'socket', event: 'close', code: ev?.code ?? null, reason: String(ev?.reason ?? '') }),
    );
    client.socketAdapter.onError((ev) =>
      emit({ type: 'socket', event: 'error', error: errorMessage(ev?.error ?? ev?.message ?? ev) }),
    );
    if (trace) {
      client.socketAdapter.onMessage((m) => emit({ type: 'message', message: m }));
    }
    if (cmd.heartbeatEvents) {
      client.onHeartbeat((status, latency) => emit({ type: 'heartbeat', status, latency: latency ?? null }));
    }
    client.connect();
    return { endpoint: client.endpointURL(), vsn: client.vsn };
  },

  channel(cmd) {
    const c = requireClient();
    if (!cmd.topic) throw new Error('channel: "topic" is required');
    const ch = c.channel(cmd.topic, { config: cmd.config || {} });
    channels.set(cmd.topic, ch);
    return { topic: ch.topic };
  },

  on_broadcast(cmd) {
    const ch = requireChannel(cmd.topic);
    const event = cmd.event ?? '*';
    ch.on('broadcast', { event }, (msg) => {
      emit({ type: 'broadcast', topic: cmd.topic, event: msg?.event ?? null, payload: msg });
    });
    return { event };
  },

  on_presence(cmd) {
    const ch = requireChannel(cmd.topic);
    const state = () => toJsonSafe(ch.presenceState());
    ch.on('presence', { event: 'sync' }, () => {
      emit({ type: 'presence', topic: cmd.topic, event: 'sync', state: state() });
    });
    ch.on('presence', { event: 'join' }, ({ key, currentPresences, newPresences }) => {
      emit({
        type: 'presence', topic: cmd.topic, event: 'join', key,
        current: currentPresences, new: newPresences, state: state(),
      });
    });
    ch.on('presence', { event: 'leave' }, ({ key, currentPresences, leftPresences }) => {
      emit({
        type: 'presence', topic: cmd.topic, event: 'leave', key,
        current: currentPresences, left: leftPresences, state: state(),
      });
    });
    return {};
  },

  on_system(cmd) {
    const ch = requireChannel(cmd.topic);
    ch.on('system', {}, (payload) => emit({ type: 'system', topic: cmd.topic, payload }));
    return {};
  },

  subscribe(cmd) {
    const ch = requireChannel(cmd.topic);
    const cb = (status, err) => {
      emit({ type: 'status', topic: cmd.topic, status, error: errorMessage(err) });
    };
    if (cmd.timeout) ch.subscribe(cb, cmd.timeout);
    else ch.subscribe(cb);
    return { state: ch.state };
  },

  async send(cmd) {
    const ch = requireChannel(cmd.topic);
    const msg = { type: cmd.type || 'broadcast', event: cmd.event, payload: fromJsonSafe(cmd.payload ?? {}) };
    const result = await withTimeout(ch.send(msg, cmd.opts || {}), 60000, 'send');
    return result;
  },

  async http_send(cmd) {
    const ch = requireChannel(cmd.topic);
    const result = await withTimeout(
      ch.httpSend(cmd.event, fromJsonSafe(cmd.payload ?? {}), cmd.opts || {}), 60000, 'httpSend');
    return result;
  },

  async track(cmd) {
    const ch = requireChannel(cmd.topic);
    return await withTimeout(ch.track(cmd.payload ?? {}, cmd.opts || {}), 60000, 'track');
  },

  async untrack(cmd) {
    const ch = requireChannel(cmd.topic);
    return await withTimeout(ch.untrack(cmd.opts || {}), 60000, 'untrack');
  },

  presence_state(cmd) {
    return requireChannel(cmd.topic).presenceState();
  },

  async unsubscribe(cmd) {
    const ch = requireChannel(cmd.topic);
    const result = await withTimeout(ch.unsubscribe(cmd.timeout), 60000, 'unsubscribe');
    return result;
  },

  async remove_channel(cmd) {
    const c = requireClient();
    const ch = requireChannel(cmd.topic);
    const result = await withTimeout(c.removeChannel(ch), 60000, 'removeChannel');
    channels.delete(cmd.topic);
    return result;
  },

  async set_auth(cmd) {
    const c = requireClient();
    await withTimeout(c.setAuth(cmd.token ?? null), 30000, 'setAuth');
    return { accessTokenValue: c.accessTokenValue };
  },

  state() {
    const out = { connected: false, connection: null, channels: {} };
    if (client) {
      out.connected = client.isConnected();
      out.connection = client.connectionState();
    }
    for (const [name, ch] of channels) out.channels[name] = ch.state;
    return out;
  },

  async disconnect() {
    if (!client) return 'not connected';
    const result = await withTimeout(client.disconnect(), 30000, 'disconnect');
    return result;
  },

  on_postgres_changes(cmd) {
    const ch = requireChannel(cmd.topic);
    const filter = cmd.filter || { event: '*', schema: 'public' };
    const label = cmd.label ?? null;
    ch.on('postgres_changes', filter, (payload) => {
      emit({ type: 'postgres_changes', topic: cmd.topic, label, payload });
    });
    return { label };
  },

  async set_access_token_fn(cmd) {
    accessTokenFnValue = cmd.token ?? null;
    if (cmd.refresh) {
      const c = requireClient();
      await withTimeout(c.setAuth(), 30000, 'setAuth');
      return { accessTokenValue: c.accessTokenValue };
    }
    return {};
  },

  exit() {
    setTimeout(() => process.exit(0), 10);
    return 'bye';
  },
};

async function handleLine(line) {
  const text = line.trim();
  if (!text) return;
  let cmd;
  try {
    cmd = JSON.parse(text);
  } catch (e) {
    emit({ type: 'error', error: `bad command JSON: ${e.message}`, line: text });
    return;
  }
  const id = cmd.id ?? null;
  const handler = handlers[cmd.cmd];
  if (!handler) {
    emit({ type: 'result', id, ok: false, error: `unknown command "${cmd.cmd}"` });
    return;
  }
  try {
    const result = await handler(cmd);
    emit({ type: 'result', id, cmd: cmd.cmd, ok: true, result: result ?? null });
  } catch (e) {
    emit({ type: 'result', id, cmd: cmd.cmd, ok: false, error: errorMessage(e) });
  }
}

process.on('uncaughtException', (e) => emit({ type: 'error', error: `uncaughtException: ${errorMessage(e)}` }));
process.on('unhandledRejection', (e) => emit({ type: 'error', error: `unhandledRejection: ${errorMessage(e)}` }));
process.stdout.on('error', () => process.exit(0)); // parent went away

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  // Commands run concurrently (a pending send() must not block an unsubscribe);
  // results carry the command id.
  handleLine(line);
});
rl.on('close', async () => {
  try {
    if (client) await withTimeout(client.disconnect(), 2000, 'disconnect');
  } catch {
    // ignore
  }
  process.exit(0);
});

emit({ type: 'ready', node: process.version });
