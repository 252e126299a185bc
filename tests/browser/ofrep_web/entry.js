// The OpenFeature web SDK and the OFREP web provider, bundled (esbuild, IIFE) for the test page
// of tests/browser/test_ofrep_web_provider.py. The page calls window.ofrepHarness.start(); the
// test reads window.ofrepHarness.state, so every event the provider emits is visible to Python.
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';
import { OpenFeature, ProviderEvents } from '@openfeature/web-sdk';

const state = { ready: false, value: null, changes: [], stale: 0, errors: [], log: [] };

function note(kind, detail) {
  // performance.timeOrigin + now(): wall-clock milliseconds the test can compare with its own clock.
  state.log.push({ kind, at: performance.timeOrigin + performance.now(), detail });
}

// The provider opens its streams with the global EventSource: record when each one opens or
// fails, so the test can see the reconnection after a server restart.
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(url, init) {
    super(url, init);
    note('sse-new', url.split('?')[0]);
    this.addEventListener('open', () => note('sse-open', ''));
    this.addEventListener('error', () => note('sse-error', `readyState ${this.readyState}`));
  }
};

async function start({ sdkKey, flagKey, defaultValue, context }) {
  const provider = new OFREPWebProvider({
    baseUrl: window.location.origin,
    headers: [['Authorization', `Bearer ${sdkKey}`]],
    cacheMode: 'disabled', // every value comes from the server, none from localStorage
  });
  const client = OpenFeature.getClient();
  const read = () => client.getStringValue(flagKey, defaultValue);
  client.addHandler(ProviderEvents.Ready, () => {
    state.ready = true;
    state.value = read();
    note('ready', state.value);
  });
  client.addHandler(ProviderEvents.ConfigurationChanged, (details) => {
    state.value = read();
    const at = performance.timeOrigin + performance.now();
    state.changes.push({ at, value: state.value, flagsChanged: (details && details.flagsChanged) || [] });
    note('configuration-changed', state.value);
  });
  client.addHandler(ProviderEvents.Stale, (details) => {
    state.stale += 1;
    note('stale', details && details.message);
  });
  client.addHandler(ProviderEvents.Error, (details) => {
    state.errors.push(String(details && details.message));
    note('error', details && details.message);
  });
  await OpenFeature.setContext(context || {});
  await OpenFeature.setProviderAndWait(provider);
}

window.ofrepHarness = { start, state };
