'use strict';
// Where a path of the simulated computer lies on this machine. The simulated OS decides the forms:
//   macintosh: Max paths "Volume:/folder/file" ("Macintosh HD:/Users/me/a.wav"; Max's "max" path style,
//     [conformpath] https://docs.cycling74.com/max8/refpages/conformpath), native POSIX paths, and
//     /Volumes/<boot volume>/... which on macOS is a link to / (the boot volume is mounted at / and
//     listed under /Volumes). The native paths ARE this machine's paths (tests use temporary folders).
//   windows: "C:/folder/file" (Max) or "C:\folder\file" (native); Windows' file functions accept both
//     separators ("Naming Files, Paths, and Namespaces", https://learn.microsoft.com/en-us/windows/win32/fileio/naming-a-file).
//     Each drive letter maps to a folder of this machine (drives: {C: '/tmp/x/C'}).
//   posix: paths are this machine's paths.
const path = require('node:path');

class HostFs {
  constructor({ os = 'posix', bootVolume = 'Macintosh HD', drives = {} } = {}) {
    this.os = os;
    this.bootVolume = bootVolume;
    this.drives = {};
    for (const [k, v] of Object.entries(drives)) this.drives[k.replace(':', '').toUpperCase()] = v;
  }

  // A path in any form the simulated OS or Max accepts -> this machine's absolute path, or null.
  real(p) {
    p = String(p);
    if (this.os === 'windows') {
      const m = /^([A-Za-z]):[\\/](.*)$/.exec(p);
      if (!m || !this.drives[m[1].toUpperCase()]) return null;
      return path.join(this.drives[m[1].toUpperCase()], ...m[2].split(/[\\/]+/).filter(Boolean));
    }
    if (this.os === 'macintosh') {
      const vol = /^([^/:]+):(\/.*)?$/.exec(p);
      if (vol) {
        if (vol[1] !== this.bootVolume) return null;       // no other volumes in the simulation
        return vol[2] || '/';
      }
      const prefix = '/Volumes/' + this.bootVolume;
      if (p === prefix || p.startsWith(prefix + '/')) return p.slice(prefix.length) || '/';
      return p.startsWith('/') ? p : null;
    }
    return p.startsWith('/') ? p : null;
  }

  // This machine's path -> the simulated OS's native form (for a test to build expectations).
  native(realPath) {
    if (this.os === 'windows') {
      for (const [letter, root] of Object.entries(this.drives)) {
        const rel = path.relative(root, realPath);
        if (!rel.startsWith('..') && !path.isAbsolute(rel)) return `${letter}:\\` + rel.split(path.sep).join('\\');
      }
      throw new Error(`${realPath} is on no simulated drive`);
    }
    return realPath;
  }

  // This machine's path -> the Max form (Macintosh HD:/..., C:/...).
  maxPath(realPath) {
    if (this.os === 'windows') return this.native(realPath).replace(/\\/g, '/');
    if (this.os === 'macintosh') return `${this.bootVolume}:${realPath}`;
    return realPath;
  }
}

module.exports = { HostFs };
