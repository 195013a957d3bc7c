// The 3D viewer's third-party libraries as one ES module (e2e3d_provider/api/static/vendor/viewer/viewer-libs.js).
// The viewer's own code (api/static/viewer.js) imports these names; rebuild with `npm ci && npm run build`.
export * as THREE from 'three';
export { OrbitControls } from 'three/addons/controls/OrbitControls.js';
export { MeshoptDecoder } from 'three/addons/libs/meshopt_decoder.module.js';
export { TilesRenderer } from '3d-tiles-renderer/three';
export { GLTFExtensionsPlugin } from '3d-tiles-renderer/three/plugins';
export { TilesetValidationPlugin } from '3d-tiles-renderer/src/three/plugins/TilesetValidationPlugin.js';
export { Copc } from 'copc';
export { createLazPerf } from 'laz-perf';
