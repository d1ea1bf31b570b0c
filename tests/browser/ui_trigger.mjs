// Drives the Airflow UI with Playwright (playwright-core + Debian's chromium, headless).
//   node ui_trigger.mjs trigger   log in, open recflow_nightly, trigger it from the form with TOP_N
//   node ui_trigger.mjs final     log in, open the run's page, screenshot it (after the run has finished)
// Environment: BASE_URL, UI_USER, UI_PASSWORD, TOP_N, RUN_ID (final), ARTIFACTS, CHROMIUM, PLAYWRIGHT_DIR
import { createRequire } from 'module';
import path from 'path';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

const base = process.env.BASE_URL;
const artifacts = process.env.ARTIFACTS;
const mode = process.argv[2];

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
  await page.goto(base + '/');
  await page.waitForURL(/\/auth\/login/);
  await page.fill('input[name=username]', process.env.UI_USER);
  await page.fill('input[name=password]', process.env.UI_PASSWORD);
  await shot(`${mode}-01-login.png`);
  await page.click('button:has-text("Sign in")');
  await page.waitForURL((url) => !url.toString().includes('/auth/login'));

  if (mode === 'trigger') {
    await page.goto(base + '/dags/recflow_nightly');
    await page.getByRole('button', { name: 'Trigger Dag' }).click();
    const dialog = page.getByRole('dialog');
    const topN = dialog.locator('input[name=element_top_n]');
    await topN.fill(process.env.TOP_N);
    // the demo-data switch: its input is visually hidden; the label around it is what a user clicks
    const demo = dialog.locator('input[name=element_generate_demo_data]');
    if (!(await demo.isChecked())) await dialog.locator('label:has(input[name=element_generate_demo_data])').click();
    if (!(await demo.isChecked())) throw new Error('could not switch on generate_demo_data');
    if ((await topN.inputValue()) !== process.env.TOP_N) throw new Error('top_n did not take the value');
    await shot('trigger-02-form.png');
    await dialog.getByRole('button', { name: 'Trigger', exact: true }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.waitForTimeout(2000);
    await shot('trigger-03-triggered.png');
    console.log('TRIGGERED');
  } else if (mode === 'final') {
    await page.goto(`${base}/dags/recflow_nightly/runs/${encodeURIComponent(process.env.RUN_ID)}`);
    await page.waitForLoadState('networkidle');
    await page.getByText('publish').first().waitFor();
    await shot('final-02-run.png');
    console.log('FINAL');
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (err) {
  await shot(`${mode}-error.png`).catch(() => {});
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
}
