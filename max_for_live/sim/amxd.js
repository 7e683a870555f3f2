'use strict';
// Reads a BUILT Max for Live device (.amxd) the way Live/Max find its parts, without using build.py.
//
// Layout sources: Ableton's own reader of .amxd files, github.com/Ableton/maxdevtools
// (maxdiff/amxd_textconv.py and maxdiff/frozen_device_printer.py), and the devices in that repository
// (cpu-reporter/CPU Reporter.amxd, maxdiff/tests/test_files/FrozenTest.amxd saved by Max 8.6.4 / 9.0.10):
//   top level: chunks of 4-byte tag | uint32 LE size | data ('ampf' device type, 'meta', 'ptch')
//   'ptch' of an unfrozen device: the patcher JSON (+ NUL); of a frozen one: an 'mx@c' collective:
//     'mx@c' | uint32 BE header size | uint64 BE offset of the directory | file data | 'dlst' directory
//     of 'dire' entries whose fields are 'tag' | uint32 BE size (incl. 8-byte header) | data
//     (type, fnam, sz32, of32, vers, flag, mdat); the device's own patcher has flag 0x11.
const fs = require('node:fs');

function readChunks(buf) {
  const chunks = [];
  let pos = 0;
  while (pos + 8 <= buf.length) {
    const tag = buf.toString('latin1', pos, pos + 4);
    const size = buf.readUInt32LE(pos + 4);
    if (pos + 8 + size > buf.length) throw new Error(`amxd: chunk ${tag} runs past the end of the file`);
    chunks.push({ tag, data: buf.subarray(pos + 8, pos + 8 + size) });
    pos += 8 + size;
  }
  if (pos !== buf.length) throw new Error('amxd: trailing bytes after the last chunk');
  return chunks;
}

function fields(buf) {
  const out = [];
  let pos = 0;
  while (pos + 8 <= buf.length) {
    const tag = buf.toString('latin1', pos, pos + 4);
    const size = buf.readUInt32BE(pos + 4);
    if (size < 8 || pos + size > buf.length) throw new Error(`amxd: bad field ${tag} of size ${size}`);
    out.push({ tag, data: buf.subarray(pos + 8, pos + size) });
    pos += size;
  }
  return out;
}

function cString(data) {
  const end = data.indexOf(0);
  return data.toString('utf8', 0, end < 0 ? data.length : end);
}

// -> [{name, type, flag, data}] of an 'mx@c' collective
function readCollective(buf) {
  if (buf.toString('latin1', 0, 4) !== 'mx@c') throw new Error('amxd: ptch is not an mx@c collective');
  const dirOffset = Number(buf.readBigUInt64BE(8));
  const dlst = fields(buf.subarray(dirOffset));
  if (dlst.length !== 1 || dlst[0].tag !== 'dlst') throw new Error('amxd: no dlst directory');
  return fields(dlst[0].data).map((dire) => {
    if (dire.tag !== 'dire') throw new Error(`amxd: unexpected ${dire.tag} in dlst`);
    const f = {};
    for (const x of fields(dire.data)) f[x.tag] = x.data;
    const size = f.sz32.readUInt32BE(0);
    const offset = f.of32.readUInt32BE(0);
    return { name: cString(f.fnam), type: f.type.toString('latin1'), flag: f.flag ? f.flag.readUInt32BE(0) : 0,
      data: buf.subarray(offset, offset + size) };
  });
}

// -> {deviceType, meta, patcher (parsed JSON), files: {name: Buffer}, frozen}
function readAmxd(file) {
  const buf = Buffer.isBuffer(file) ? file : fs.readFileSync(file);
  const chunks = readChunks(buf);
  const get = (tag) => {
    const c = chunks.find((x) => x.tag === tag);
    if (!c) throw new Error(`amxd: no '${tag}' chunk`);
    return c.data;
  };
  const deviceType = get('ampf').toString('latin1');
  const meta = get('meta').readUInt32LE(0);
  const ptch = get('ptch');
  const files = {};
  let patcherText;
  let frozen = false;
  if (ptch.toString('latin1', 0, 4) === 'mx@c') {
    frozen = true;
    const entries = readCollective(ptch);
    const device = entries.find((e) => e.flag === 0x11);
    if (!device) throw new Error('amxd: no device entry (flag 0x11) in the collective');
    patcherText = cString(device.data);
    for (const e of entries) if (e !== device) files[e.name] = e.data;
  } else {
    patcherText = cString(ptch);
  }
  return { deviceType, meta, patcher: JSON.parse(patcherText).patcher, files, frozen };
}

module.exports = { readAmxd, readChunks, readCollective };
