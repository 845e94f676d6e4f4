import { defineConfig } from '@playwright/test';

/**
 * Drives a JupyterLab that is already running (with jupyter-docker-env installed):
 * JDE_LAB_URL is its /lab URL, JDE_LAB_TOKEN its token.
 */
export default defineConfig({
  testDir: './tests',
  outputDir: './test-results',
  workers: 1,
  retries: 0,
  reporter: 'list',
  timeout: 600_000,
  expect: { timeout: 30_000 },
  use: {
    viewport: { width: 1400, height: 900 },
    actionTimeout: 30_000,
    navigationTimeout: 60_000,
    trace: 'off',
    launchOptions: {
      executablePath: process.env.JDE_CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--headless',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run'
      ]
    }
  }
});
