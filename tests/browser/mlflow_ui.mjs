// Drives the MLflow UI with Playwright (playwright-core + Debian's chromium, headless): opens a run's page and
// checks that a metric's name and value are shown.
//   node mlflow_ui.mjs
// Environment: BASE_URL, EXPERIMENT_ID, RUN_ID, METRIC, VALUE (as the UI prints it), ARTIFACTS, CHROMIUM,
// PLAYWRIGHT_DIR
import { createRequire } from 'module';
import path from 'path';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

const { BASE_URL: base, EXPERIMENT_ID: experiment, RUN_ID: run, METRIC: metric, VALUE: value } = process.env;
const artifacts = process.env.ARTIFACTS;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(120000);
const shot = (name) => page.screenshot({ path: path.join(artifacts, name), fullPage: true });

try {
  await page.goto(`${base}/#/experiments/${experiment}/runs/${run}`);
  // the UI keeps polling, so the network never settles: wait for the run's metrics table instead
  await page.getByText(/^Metrics \(\d+\)$/).first().waitFor();
  // the run page's metrics table can be long: narrow it to the metric when it offers a search box
  const search = page.getByPlaceholder(/search metrics/i);
  if (await search.count()) await search.first().fill(metric);
  const name = page.getByText(metric, { exact: true }).first();
  await name.waitFor();
  const row = page.locator('tr, [role=row]').filter({ has: page.getByText(metric, { exact: true }) }).first();
  const shown = (await row.count()) ? await row.innerText() : await page.locator('body').innerText();
  await shot('mlflow-run.png');
  if (!shown.includes(value)) throw new Error(`metric ${metric}: value ${value} not shown in ${JSON.stringify(shown)}`);
  console.log(`SHOWN ${metric} ${value}`);
} catch (err) {
  await shot('mlflow-error.png').catch(() => {});
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
}
