#!/usr/bin/env bash
# Rebuild the vendored three.js of the mentor page's 3D view (mentor/static/vendor/three/) from
# the npm registry at pinned versions. The output is committed: installs and CI never need npm
# for it. One ES module holds three.js, its GLTFLoader and OrbitControls (the addons import the
# bare name "three", which a browser resolves only through an inline import map, and the
# page's CSP forbids inline scripts), minified, tree-shaken to what mentor3d.js imports.
#   bash scripts/vendor_three.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREE_VERSION=0.187.0
ESBUILD_VERSION=0.28.2
out=mentor/static/vendor/three
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm install --prefix "$work" --silent --no-audit --no-fund "three@$THREE_VERSION" "esbuild@$ESBUILD_VERSION"
# Every name mentor3d.js imports; a name missing here is an import error in the page's console.
cat > "$work/entry.js" <<'JS'
export {
  AmbientLight, Box3, BufferGeometry, CanvasTexture, Color, DirectionalLight, Group, LineBasicMaterial,
  LineSegments, Mesh, MeshBasicMaterial, PerspectiveCamera, Raycaster, Scene, SphereGeometry, Sprite,
  SpriteMaterial, Vector2, Vector3, WebGLRenderer,
} from "three";
export { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
export { OrbitControls } from "three/addons/controls/OrbitControls.js";
JS
mkdir -p "$out"
"$work/node_modules/.bin/esbuild" "$work/entry.js" --bundle --minify --format=esm --target=es2020 \
    --legal-comments=inline --log-level=warning --outfile="$out/three.min.js"
cp "$work/node_modules/three/LICENSE" "$out/LICENSE"
sha=$(sha256sum "$out/three.min.js" | cut -d" " -f1)
cat > "$out/README.md" <<MD
# three.js for the mentor page's 3D view (vendored)

- three $THREE_VERSION (MIT, see LICENSE), from the npm registry, with its addons
  GLTFLoader and OrbitControls, bundled into one ES module \`three.min.js\` by
  esbuild $ESBUILD_VERSION (minified; only the names mentor3d.js imports).
- sha256 of three.min.js: \`$sha\`
- Rebuild (a new version, or another imported name): \`bash scripts/vendor_three.sh\`.
MD
echo "vendored three $THREE_VERSION: $out/three.min.js ($(wc -c < "$out/three.min.js") bytes)"
