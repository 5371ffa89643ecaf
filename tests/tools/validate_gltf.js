// Validate a GLB with the Khronos glTF validator; prints a JSON summary of the report.
const validator = require('gltf-validator');
const fs = require('fs');

const data = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(data).then((report) => {
  const issues = report.issues;
  console.log(JSON.stringify({
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    messages: issues.messages.slice(0, 20).map((m) => `${m.code}: ${m.message}`),
  }));
}).catch((error) => { console.error(String(error)); process.exit(1); });
