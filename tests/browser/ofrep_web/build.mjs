// Bundles entry.js into dist/ofrep-web.js (IIFE, no module loader needed in the test page).
import { build } from 'esbuild';

await build({
  entryPoints: ['entry.js'],
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome110'],
  outfile: 'dist/ofrep-web.js',
  logLevel: 'warning',
});
