'use strict';
// OSC 1.0 messages (https://opensoundcontrol.stanford.edu/spec-1_0.html): an OSC-string address, an
// OSC-string type tag string starting with ',', then the arguments; strings are NUL-terminated and
// padded to a multiple of 4 bytes; int32 'i' and float32 'f' are big-endian. Only what Max's
// [udpsend]/[udpreceive] exchange with the daemon: i, f, s (and d, h, T, F, N decoded for safety).

function oscString(s) {
  const raw = Buffer.from(String(s) + '\0', 'utf8');
  return Buffer.concat([raw, Buffer.alloc((4 - (raw.length % 4)) % 4)]);
}

// args: [{type: 'i'|'f'|'s', value}]
function encode(address, args) {
  const parts = [oscString(address), oscString(',' + args.map((a) => a.type).join(''))];
  for (const a of args) {
    if (a.type === 'i') { const b = Buffer.alloc(4); b.writeInt32BE(a.value); parts.push(b); }
    else if (a.type === 'f') { const b = Buffer.alloc(4); b.writeFloatBE(a.value); parts.push(b); }
    else if (a.type === 's') parts.push(oscString(a.value));
    else throw new Error(`osc: cannot encode type ${a.type}`);
  }
  return Buffer.concat(parts);
}

function readString(buf, pos) {
  const end = buf.indexOf(0, pos);
  if (end < 0) throw new Error('osc: unterminated string');
  return { value: buf.toString('utf8', pos, end), next: pos + Math.ceil((end - pos + 1) / 4) * 4 };
}

// -> {address, args: [{type, value}]}; bundles ('#bundle') are not used by the daemon.
function decode(buf) {
  const addr = readString(buf, 0);
  if (addr.value === '#bundle') throw new Error('osc: bundles are not supported by the simulation');
  let pos = addr.next;
  if (pos >= buf.length) return { address: addr.value, args: [] };
  const tags = readString(buf, pos);
  pos = tags.next;
  if (tags.value[0] !== ',') throw new Error('osc: no type tag string');
  const args = [];
  for (const t of tags.value.slice(1)) {
    if (t === 'i') { args.push({ type: 'i', value: buf.readInt32BE(pos) }); pos += 4; }
    else if (t === 'f') { args.push({ type: 'f', value: buf.readFloatBE(pos) }); pos += 4; }
    else if (t === 'd') { args.push({ type: 'd', value: buf.readDoubleBE(pos) }); pos += 8; }
    else if (t === 'h') { args.push({ type: 'h', value: Number(buf.readBigInt64BE(pos)) }); pos += 8; }
    else if (t === 's' || t === 'S') { const s = readString(buf, pos); args.push({ type: 's', value: s.value }); pos = s.next; }
    else if (t === 'T' || t === 'F' || t === 'N') args.push({ type: t, value: t === 'T' ? 1 : 0 });
    else throw new Error(`osc: cannot decode type ${t}`);
  }
  return { address: addr.value, args };
}

module.exports = { encode, decode };
