// node validate_gltf.cjs FILE.glb...: the Khronos glTF validator (npm gltf-validator, pinned in package.json) on
// every file, in one node process; prints one JSON object {path: {errors, warnings, infos, hints, messages}}.
// External resources are refused: a web GLB or a tile must be self-contained.
'use strict';
const fs = require('fs');
const path = require('path');
const validator = require('gltf-validator');

(async () => {
  const out = {};
  for (const file of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
      uri: path.basename(file),
      maxIssues: 200,
      externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} refused`)),
    });
    const issues = report.issues;
    out[file] = {
      errors: issues.numErrors,
      warnings: issues.numWarnings,
      infos: issues.numInfos,
      hints: issues.numHints,
      messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, pointer: m.pointer || '', message: m.message })),
    };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n');
  process.exit(1);
});
