// Cornerstone3D peer page for the side-by-side benchmark: one stack viewport, loaded with a
// retrieve configuration (their imageRetrieveConfiguration: stages + retrieveOptions), reporting
// what it drew in window.peerLog with the same fields as our page's window.renderLog.
import {
  Enums,
  ProgressiveRetrieveImages,
  RenderingEngine,
  cache,
  getRenderingEngine,
  getShouldUseCPURendering,
  init as coreInit,
  metaData,
  utilities,
} from '@cornerstonejs/core';
import { init as loaderInit, wadors } from '@cornerstonejs/dicom-image-loader';

const ENGINE_ID = 'peer';
const VIEWPORT_ID = 'stack';
const FULL = Enums.ImageQualityStatus.FULL_RESOLUTION;
const { imageRetrieveMetadataProvider } = utilities;

const html = document.documentElement;
const element = document.getElementById('viewport');
const errors = document.getElementById('errors');
window.peerLog = [];

function setState(state) {
  html.dataset.app = state;
}

function fail(message) {
  errors.textContent = String(message);
  setState('error');
}

function statusName(value) {
  return Enums.ImageQualityStatus[value] || String(value);
}

function tagValue(instance, tag) {
  const value = instance[tag] && instance[tag].Value;
  return value ? value[0] : undefined;
}

// One imageId per instance (frame 1), in InstanceNumber order as our page orders a stack.
async function imageIdsFor(seriesUrl) {
  const response = await fetch(`${seriesUrl}/metadata`);
  if (!response.ok) {
    throw new Error(`metadata: HTTP ${response.status} for ${seriesUrl}/metadata`);
  }
  const instances = await response.json();
  instances.sort((a, b) => (tagValue(a, '00200013') || 0) - (tagValue(b, '00200013') || 0));
  return instances.map((instance) => {
    const sop = tagValue(instance, '00080018');
    const imageId = `wadors:${seriesUrl}/instances/${sop}/frames/1`;
    wadors.metaDataManager.add(imageId, instance);
    return imageId;
  });
}

// What the viewport asks the loader for an image, as StackViewport.getLoaderImageOptions does.
function loaderOptions(imageIds, imageId) {
  const { transferSyntaxUID } = metaData.get(Enums.MetadataModules.TRANSFER_SYNTAX, imageId) || {};
  return {
    useRGBA: false,
    transferSyntaxUID,
    priority: 5,
    requestType: Enums.RequestType.Interaction,
    additionalDetails: { imageId, imageIdIndex: imageIds.indexOf(imageId) },
  };
}

const run = { generation: 0, t0: 0, imageIds: [], current: 0, lastDrawn: null, done: false };

function record(index, image, drawn) {
  const now = performance.now();
  window.peerLog.push({
    index,
    status: statusName(image.imageQualityStatus),
    rows: image.rows,
    columns: image.columns,
    t_ms: Math.round((now - run.t0) * 10) / 10,
    final: image.imageQualityStatus === FULL,
    drawn,
    bench_now: now,
  });
}

// A draw: the viewport rendered an image (first time for this image object or quality).
function onRendered() {
  const viewport = getRenderingEngine(ENGINE_ID).getViewport(VIEWPORT_ID);
  const image = viewport.getCornerstoneImage && viewport.getCornerstoneImage();
  if (!image || image === run.lastDrawn) {
    return;
  }
  run.lastDrawn = image;
  record(run.imageIds.indexOf(image.imageId), image, true);
}

// Stack mode: the whole stack through their progressive loader (interleaved stages and nearby
// frames work over all images, as for a volume); each image is logged when it is available.
function stackListener(imageIds) {
  const generation = run.generation;
  return {
    successCallback(imageId, image) {
      if (generation === run.generation) {
        const index = imageIds.indexOf(imageId);
        record(index, image, index === run.current);
      }
    },
    errorCallback(imageId, permanent, error) {
      if (permanent && generation === run.generation) {
        errors.textContent += `${imageId}: ${error}\n`;
      }
    },
    getLoaderImageOptions: (imageId) => loaderOptions(imageIds, imageId),
  };
}

async function load(seriesUrl, configuration, options = {}) {
  const generation = ++run.generation;
  setState('loading');
  errors.textContent = '';
  window.peerLog = [];
  try {
    cache.purgeCache();
    imageRetrieveMetadataProvider.clear();
    run.t0 = performance.now();
    run.lastDrawn = null;
    const imageIds = await imageIdsFor(seriesUrl);
    run.imageIds = imageIds;
    const current = options.index ?? (options.stack ? Math.floor((imageIds.length - 1) / 2) : 0);
    run.current = current;
    if (configuration) {
      imageRetrieveMetadataProvider.add('stack', configuration);
    }
    if (options.stack) {
      const loader = ProgressiveRetrieveImages.createProgressive(configuration || {});
      await loader.loadImages(imageIds, stackListener(imageIds));
    } else {
      const viewport = getRenderingEngine(ENGINE_ID).getViewport(VIEWPORT_ID);
      await viewport.setStack(imageIds, current);
      await waitForFinal(imageIds[current], generation);
    }
    if (generation === run.generation) {
      setState(errors.textContent ? 'error' : 'idle');
    }
  } catch (error) {
    if (generation === run.generation) {
      fail(error && error.stack ? error.stack : error);
    }
  }
}

// setStack resolves when the loader has run every stage; the draw of its last image follows
// on the next animation frame.
function waitForFinal(imageId, generation) {
  const since = performance.now();
  return new Promise((resolve) => {
    const check = () => {
      const drawn = run.lastDrawn;
      if (generation !== run.generation || (drawn && drawn.imageId === imageId && drawn.imageQualityStatus === FULL)) {
        resolve();
      } else if (performance.now() - since > 5000) {
        errors.textContent = `no full-resolution image of ${imageId} was drawn`;
        resolve();
      } else {
        setTimeout(check, 10);
      }
    };
    check();
  });
}

function toHex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

// The pixel values the loader holds for an image (the one on screen by default): sha256 of the
// typed array's bytes, with what is needed to compute the same from the source.
async function pixels(index, withBytes = false) {
  const imageId = run.imageIds[index ?? run.current];
  const image = cache.getImage(imageId) || (run.lastDrawn && run.lastDrawn.imageId === imageId ? run.lastDrawn : null);
  if (!image) {
    return null;
  }
  const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = {
    index: index ?? run.current,
    imageId,
    sop: imageId.split('/instances/')[1].split('/')[0],
    type: data.constructor.name,
    rows: image.rows,
    columns: image.columns,
    status: statusName(image.imageQualityStatus),
    preScaled: Boolean(image.preScale && image.preScale.scaled),
    slope: image.slope,
    intercept: image.intercept,
    sha256: toHex(await crypto.subtle.digest('SHA-256', bytes)),
  };
  if (withBytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    out.base64 = btoa(s);
  }
  return out;
}

async function boot() {
  setState('booting');
  await coreInit();
  loaderInit({ wasmBasePath: new URL('./wasm/', import.meta.url).href });
  const engine = new RenderingEngine(ENGINE_ID);
  engine.enableElement({ viewportId: VIEWPORT_ID, element, type: Enums.ViewportType.STACK });
  element.addEventListener(Enums.Events.IMAGE_RENDERED, onRendered);
  window.peer = {
    load,
    pixels,
    cpuRendering: getShouldUseCPURendering(),
    imageIds: () => run.imageIds.slice(),
    viewport: () => getRenderingEngine(ENGINE_ID).getViewport(VIEWPORT_ID),
  };
  setState('ready');
}

boot().catch((error) => fail(error && error.stack ? error.stack : error));
