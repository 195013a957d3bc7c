// The 3D viewer: a job's mesh (3D Tiles) and point cloud (COPC) streamed into one three.js view through the
// results API's file route (GET api/v1/jobs/{id}/files/{path}: a redirect to a short-lived pre-signed URL; Range
// requests pass through). Level of detail follows the camera: 3d-tiles-renderer refines tiles by their
// geometric error on screen, and the COPC octree is walked here by the point spacing on screen under a
// point budget. The libraries are the package's own bundle (static/vendor/viewer/, see its README).
//
// State for tests and scripts: body[data-state] = loading | idle | error, and window.e2e3dViewer
// (fetched: every file request with its bytes, tiles: the tile contents loaded, nodes: the COPC nodes loaded,
// rootBoxOnScreen(), zoom(f)).
import {
  THREE, OrbitControls, MeshoptDecoder, TilesRenderer, GLTFExtensionsPlugin, TilesetValidationPlugin, Copc,
  createLazPerf,
} from "./vendor/viewer/viewer-libs.js";

const params = new URLSearchParams(location.search);
/** ?check=1: also check every loaded tile's geometry against its bounding volumes (warnings in the console) */
const CHECK = params.has("check");
/** the most COPC points shown at once (?budget= to change) */
const POINT_BUDGET = Number(params.get("budget")) > 0 ? Number(params.get("budget")) : 1_500_000;
/** a COPC node's children are loaded while its points are further apart on screen than this */
const POINT_SPACING_PX = 2;
/** COPC node requests in flight at once */
const MAX_NODE_REQUESTS = 4;
const FOV = 50;

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat(undefined);
const count = (n) => numberFormat.format(n);
const bytesText = (n) => (n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : n >= 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B");

// ---- theme: the Airflow UI's, as the dashboard follows it ----
function currentTheme() {
  const forced = params.get("theme");
  if (forced === "dark" || forced === "light") return forced;
  try {
    const ui = window.parent !== window ? window.parent.document.documentElement.classList : null;
    if (ui && ui.contains("dark")) return "dark";
    if (ui && ui.contains("light")) return "light";
  } catch (err) { /* another origin */ }
  let stored = null;
  try { stored = localStorage.getItem("theme"); } catch (err) { /* storage blocked */ }
  if (stored === "dark" || stored === "light") return stored;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}
document.documentElement.dataset.theme = currentTheme();

// ---- what the page fetched, for the stats line and for tests ----
const viewer = {
  /** every request of a job's file, in order: {url, range, status, bytes} (bytes = the body's length) */
  fetched: [],
  /** the tile contents loaded, as their URLs (the route's, so .../files/<run-relative path>) */
  tiles: [],
  /** the COPC nodes loaded, as "depth-x-y-z" keys */
  nodes: [],
  points: 0,
  background: null,
  rootBoxOnScreen: () => null,
  zoom: () => {},
};
window.e2e3dViewer = viewer;

function showStats() {
  const bytes = viewer.fetched.reduce((sum, f) => sum + f.bytes, 0);
  $("stats").textContent = `${count(viewer.tiles.length)} tiles · ${count(viewer.points)} points in ` +
    `${count(viewer.nodes.length)} nodes · ${count(viewer.fetched.length)} requests, ${bytesText(bytes)} fetched`;
}

/** GET a job's file through the route (the browser follows the redirect; `Range` passes through), counted. */
async function fetchCounted(url, init = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...init });
  if (!response.ok) {
    throw new Error(`${url.split("/files/").pop()}: HTTP ${response.status} ${(await response.text()).slice(0, 300)}`);
  }
  const body = await response.arrayBuffer();
  const range = init.headers && init.headers.Range ? init.headers.Range : null;
  viewer.fetched.push({ url, range, status: response.status, bytes: body.byteLength });
  showStats();
  return { response, body };
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  const text = await response.text();
  if (!response.ok) {
    let detail = text;
    try { detail = JSON.parse(text).detail; } catch (err) { /* not JSON */ }
    throw new Error(`${path}: HTTP ${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return JSON.parse(text);
}

// ---- without a job: the list to pick from ----
async function listJobs() {
  const { jobs } = await api("api/v1/jobs?status=succeeded&limit=50");
  const box = $("jobs");
  if (!jobs.length) {
    box.textContent = "No succeeded job yet: run a reconstruction with right-sizing on, then open it here.";
    return;
  }
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>job</th><th>dataset</th><th>created</th></tr></thead>";
  const rows = document.createElement("tbody");
  for (const job of jobs) {
    const row = rows.insertRow();
    const link = document.createElement("a");
    link.href = `?job=${encodeURIComponent(job.job_id)}`;
    link.textContent = job.job_id;
    row.insertCell().appendChild(link);
    row.insertCell().textContent = job.dataset || "";
    row.insertCell().textContent = job.created_at ? new Date(job.created_at).toLocaleString() : "";
  }
  table.appendChild(rows);
  box.appendChild(table);
}

// ---- the view ----
function makeView() {
  const host = $("view");
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  host.appendChild(renderer.domElement);
  const help = document.createElement("div");
  help.id = "help";
  help.textContent = "drag: orbit · right-drag: pan · wheel: zoom";
  host.appendChild(help);
  const background = getComputedStyle(host).backgroundColor;
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(background);
  viewer.background = scene.background.getHexString();
  scene.add(new THREE.HemisphereLight(0xffffff, 0x606060, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.2);
  sun.position.set(0.5, 1, 0.3);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(FOV, 1, 0.01, 1000);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.enableDamping = false;
  function resize() {
    const { clientWidth: w, clientHeight: h } = host;
    renderer.setSize(w, h, false);
    camera.aspect = w / Math.max(h, 1);
    camera.updateProjectionMatrix();
  }
  resize();
  window.addEventListener("resize", resize);
  return { host, renderer, scene, camera, controls };
}

/** The tileset's root box (3D Tiles: center + three half axes, z up) as the view's axis-aligned box (y up). */
function tilesetBox(box, group) {
  group.updateMatrixWorld(true);
  const [cx, cy, cz, ...axes] = box;
  const out = new THREE.Box3();
  for (const sx of [-1, 1]) for (const sy of [-1, 1]) for (const sz of [-1, 1]) {
    const p = new THREE.Vector3(
      cx + sx * axes[0] + sy * axes[3] + sz * axes[6],
      cy + sx * axes[1] + sy * axes[4] + sz * axes[7],
      cz + sx * axes[2] + sy * axes[5] + sz * axes[8],
    );
    out.expandByPoint(p.applyMatrix4(group.matrixWorld));
  }
  return out;
}

function openTileset(entry, view) {
  const tiles = new TilesRenderer(new URL(entry.route, location.href).href);
  tiles.registerPlugin(new GLTFExtensionsPlugin({ meshoptDecoder: MeshoptDecoder }));
  tiles.registerPlugin({ // every tileset and tile request through the page's counter
    name: "E2E3D_COUNTED_FETCH",
    fetchData: async (url, options) => {
      const { response, body } = await fetchCounted(url, options);
      return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
    },
  });
  if (CHECK) tiles.registerPlugin(new TilesetValidationPlugin());
  tiles.group.rotation.x = -Math.PI / 2; // 3D Tiles are z up, the view (and the glTF content) y up
  tiles.setCamera(view.camera);
  tiles.setResolutionFromRenderer(view.camera, view.renderer);
  tiles.addEventListener("load-model", ({ url }) => { viewer.tiles.push(url); showStats(); });
  tiles.addEventListener("load-root-tileset", () => { tiles.rootLoaded = true; });
  tiles.addEventListener("load-error", ({ error, url }) => fail(new Error(`tileset ${url}: ${error && error.message || error}`)));
  view.scene.add(tiles.group);
  return { tiles, box: tilesetBox(entry.box, tiles.group) };
}

// ---- the COPC point cloud: an octree walked by point spacing on screen ----
let lazPerfPromise = null;
const lazPerf = () => (lazPerfPromise ||= createLazPerf({
  locateFile: (name) => new URL(`vendor/viewer/${name}`, import.meta.url).href,
}));

function childKeys(key) {
  const [d, x, y, z] = key.split("-").map(Number);
  const out = [];
  for (let i = 0; i < 8; i++) out.push(`${d + 1}-${2 * x + (i & 1)}-${2 * y + ((i >> 1) & 1)}-${2 * z + ((i >> 2) & 1)}`);
  return out;
}

async function openPointcloud(entry, view) {
  const url = new URL(entry.route, location.href).href;
  const get = async (begin, end) => new Uint8Array(
    (await fetchCounted(url, { headers: { Range: `bytes=${begin}-${end - 1}` } })).body);
  const copc = await Copc.create(get);
  const hierarchy = { nodes: {}, pages: {} };
  const addPage = (page) => { Object.assign(hierarchy.nodes, page.nodes); Object.assign(hierarchy.pages, page.pages); };
  addPage(await Copc.loadHierarchyPage(get, copc.info.rootHierarchyPage));
  const [x0, y0, z0, x1, y1, z1] = copc.info.cube;
  const center = new THREE.Vector3((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2);
  const group = new THREE.Group(); // positions are relative to the cube's centre: float32 keeps them exact
  group.position.copy(center);
  view.scene.add(group);
  // the points' bounds (the header's): the octree's cube is a cube, the points may be a thin layer of it (a
  // terrain); the view frames them, and a node's distance is to its part of them
  const data = new THREE.Box3(new THREE.Vector3(...copc.header.min), new THREE.Vector3(...copc.header.max));
  const pc = { copc, get, hierarchy, group, center, bounds: data, loaded: new Map(), pending: new Set(),
    pagesLoading: new Set(), colourScale: null };
  // a node's voxel of the cube, clipped to the points' bounds
  pc.nodeBox = (key) => {
    const [d, x, y, z] = key.split("-").map(Number);
    const size = (x1 - x0) / 2 ** d;
    const min = new THREE.Vector3(x0 + x * size, y0 + y * size, z0 + z * size);
    return new THREE.Box3(min, min.clone().addScalar(size)).intersect(data);
  };
  pc.loadPage = (key) => {
    if (pc.pagesLoading.has(key)) return;
    pc.pagesLoading.add(key);
    Copc.loadHierarchyPage(get, hierarchy.pages[key])
      .then((page) => { delete hierarchy.pages[key]; addPage(page); })
      .catch(fail)
      .finally(() => { pc.pagesLoading.delete(key); refreshPoints(); });
  };
  return pc;
}

/** The nodes the camera wants: from the root, coarsest-looking first, each node's children while its points,
 * seen from the camera at their nearest, are more than POINT_SPACING_PX apart on screen (a node of depth d
 * holds points about spacing / 2^d apart), in the view, under the point budget. */
function wantedNodes(pc, view) {
  const { camera, renderer } = view;
  const frustum = new THREE.Frustum().setFromProjectionMatrix(
    new THREE.Matrix4().multiplyMatrices(camera.projectionMatrix, camera.matrixWorldInverse));
  const pxPerUnit = renderer.domElement.height / (2 * Math.tan(THREE.MathUtils.degToRad(camera.fov) / 2));
  const spacingPx = (key, box) => {
    const depth = Number(key.split("-")[0]);
    const distance = Math.max(box.distanceToPoint(camera.position), camera.near);
    return (pc.copc.info.spacing / 2 ** depth) / distance * pxPerUnit;
  };
  const wanted = [];
  let points = 0;
  const rootKey = "0-0-0-0";
  const queue = [{ key: rootKey, px: Infinity }];
  while (queue.length) {
    queue.sort((a, b) => b.px - a.px);
    const { key } = queue.shift();
    const node = pc.hierarchy.nodes[key];
    if (!node) continue;
    const box = pc.nodeBox(key);
    if (key !== rootKey && (box.isEmpty() || !frustum.intersectsBox(box))) continue;
    if (wanted.length && points + node.pointCount > POINT_BUDGET) break;
    wanted.push(key);
    points += node.pointCount;
    if (spacingPx(key, box) <= POINT_SPACING_PX) continue;
    for (const child of childKeys(key)) {
      if (pc.hierarchy.nodes[child]) {
        queue.push({ key: child, px: spacingPx(child, pc.nodeBox(child)) });
      } else if (pc.hierarchy.pages[child]) {
        pc.loadPage(child);
      }
    }
  }
  return wanted;
}

async function loadNode(pc, key) {
  const node = pc.hierarchy.nodes[key];
  if (node.pointCount === 0) return new THREE.Group();
  const data = await Copc.loadPointDataView(pc.get, pc.copc, node, { lazPerf: await lazPerf() });
  const n = data.pointCount;
  const [X, Y, Z] = ["X", "Y", "Z"].map((d) => data.getter(d));
  const positions = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    positions[3 * i] = X(i) - pc.center.x;
    positions[3 * i + 1] = Y(i) - pc.center.y;
    positions[3 * i + 2] = Z(i) - pc.center.z;
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
  let material;
  if (data.dimensions.Red) {
    const [R, G, B] = ["Red", "Green", "Blue"].map((d) => data.getter(d));
    const colours = new Uint16Array(n * 3);
    let max = 0;
    for (let i = 0; i < n; i++) {
      colours[3 * i] = R(i); colours[3 * i + 1] = G(i); colours[3 * i + 2] = B(i);
      max = Math.max(max, colours[3 * i], colours[3 * i + 1], colours[3 * i + 2]);
    }
    // LAS colours are 16 bits; writers that store 8-bit values unscaled are common: decided once, at the root
    pc.colourScale ??= max > 255 ? 65535 : 255;
    const scaled = new Float32Array(n * 3);
    for (let i = 0; i < 3 * n; i++) scaled[i] = colours[i] / pc.colourScale;
    geometry.setAttribute("color", new THREE.BufferAttribute(scaled, 3));
    material = new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true });
  } else {
    material = new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, color: 0x4a7ab0 });
  }
  const points = new THREE.Points(geometry, material);
  points.userData.pointCount = n;
  return points;
}

// ---- the loop: tiles and nodes follow the camera; "idle" once nothing is loading or wanted for two frames ----
let view = null;
let tilesets = [];
let pointclouds = [];
let quietFrames = 0;
let failed = false;

function fail(err) {
  failed = true;
  $("error").textContent = String(err && err.stack || err);
  document.body.dataset.state = "error";
}

function refreshPoints() {
  if (!view) return;
  view.camera.updateMatrixWorld();
  for (const pc of pointclouds) {
    const wanted = wantedNodes(pc, view);
    const wantedSet = new Set(wanted);
    for (const [key, object] of pc.loaded) object.visible = wantedSet.has(key);
    for (const key of wanted) {
      if (pc.loaded.has(key) || pc.pending.has(key) || pc.pending.size >= MAX_NODE_REQUESTS) continue;
      pc.pending.add(key);
      loadNode(pc, key)
        .then((object) => {
          pc.loaded.set(key, object);
          pc.group.add(object);
          viewer.nodes.push(key);
          viewer.points += object.userData.pointCount || 0;
          showStats();
        })
        .catch(fail)
        .finally(() => { pc.pending.delete(key); refreshPoints(); });
    }
    pc.busy = pc.pending.size > 0 || pc.pagesLoading.size > 0 || wanted.some((k) => !pc.loaded.has(k));
  }
}

function frame() {
  requestAnimationFrame(frame);
  if (failed) return;
  view.camera.updateMatrixWorld();
  for (const { tiles } of tilesets) tiles.update();
  view.renderer.render(view.scene, view.camera);
  const busy = tilesets.some(({ tiles }) => !tiles.rootLoaded || tiles.isLoading ||
      tiles.stats.queued + tiles.stats.downloading + tiles.stats.parsing > 0) ||
    pointclouds.some((pc) => pc.busy);
  quietFrames = busy ? 0 : quietFrames + 1;
  document.body.dataset.state = quietFrames >= 2 ? "idle" : "loading";
}

/** Frame the model: the union of the tilesets' root boxes and the point clouds' bounds, seen from above at a slant. */
function frameAll(box) {
  const { camera, controls } = view;
  const center = box.getCenter(new THREE.Vector3());
  const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, 1e-6);
  const distance = radius / Math.sin(THREE.MathUtils.degToRad(FOV) / 2);
  camera.near = distance / 1000;
  camera.far = distance * 20;
  camera.updateProjectionMatrix();
  camera.position.copy(center).add(new THREE.Vector3(0.55, 0.75, 0.9).normalize().multiplyScalar(distance));
  controls.target.copy(center);
  controls.update();
}

/** The tilesets' root box on screen, in CSS pixels of the page: {left, top, right, bottom}, clamped to the canvas. */
function rootBoxOnScreen() {
  if (!tilesets.length) return null;
  const box = tilesets.reduce((b, t) => b.union(t.box), new THREE.Box3());
  const rect = view.renderer.domElement.getBoundingClientRect();
  let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
  for (const x of [box.min.x, box.max.x]) for (const y of [box.min.y, box.max.y]) for (const z of [box.min.z, box.max.z]) {
    const p = new THREE.Vector3(x, y, z).project(view.camera);
    const sx = rect.left + (p.x + 1) / 2 * rect.width;
    const sy = rect.top + (1 - p.y) / 2 * rect.height;
    left = Math.min(left, sx); right = Math.max(right, sx); top = Math.min(top, sy); bottom = Math.max(bottom, sy);
  }
  const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  return {
    left: clamp(left, rect.left, rect.right), right: clamp(right, rect.left, rect.right),
    top: clamp(top, rect.top, rect.bottom), bottom: clamp(bottom, rect.top, rect.bottom),
  };
}

/** Move the camera towards (f < 1) or away from (f > 1) what it looks at; loading follows. */
function zoom(f) {
  const { camera, controls } = view;
  camera.position.sub(controls.target).multiplyScalar(f).add(controls.target);
  controls.update();
  quietFrames = 0;
  document.body.dataset.state = "loading";
  refreshPoints();
}

async function jobOfPage() {
  if (params.get("job")) return params.get("job");
  if (params.get("dag_id") && params.get("run_id")) {
    const query = new URLSearchParams({ dag_id: params.get("dag_id"), run_id: params.get("run_id") });
    query.set("limit", "1"); // the runs that DAG run owns, most recently updated first
    const { jobs } = await api(`api/v1/jobs?${query}`);
    if (!jobs.length) {
      throw new Error(`no job is recorded for DAG run ${params.get("run_id")} of ${params.get("dag_id")}: `
        + "the run has not reached its prepare task yet, prepare refused it, or it is not a reconstruction run");
    }
    return jobs[0].job_id;
  }
  return null;
}

async function main() {
  const jobId = await jobOfPage();
  if (!jobId) {
    $("title").textContent = "pick a job";
    await listJobs();
    document.body.dataset.state = "idle";
    return;
  }
  $("title").innerHTML = "";
  const back = document.createElement("a");
  back.href = "?";
  back.textContent = "jobs";
  $("title").append(back, ` / ${jobId}`);
  const scene = await api(`api/v1/jobs/${encodeURIComponent(jobId)}/scene`);
  view = makeView();
  tilesets = scene.tilesets.map((entry) => openTileset(entry, view));
  pointclouds = await Promise.all(scene.pointclouds.map((entry) => openPointcloud(entry, view)));
  const all = new THREE.Box3();
  for (const t of tilesets) all.union(t.box);
  for (const pc of pointclouds) all.union(pc.bounds);
  frameAll(all);
  view.controls.addEventListener("change", refreshPoints);
  window.addEventListener("resize", refreshPoints);
  viewer.rootBoxOnScreen = rootBoxOnScreen;
  viewer.zoom = zoom;
  refreshPoints();
  requestAnimationFrame(frame);
}

main().catch(fail);
