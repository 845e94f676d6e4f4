import * as path from 'path';

import { APIRequestContext, expect, test } from '@playwright/test';

import {
  API_URL,
  AUTH,
  BASE_URL,
  BUILD_TIMEOUT,
  hideNotifications,
  openLab,
  openPanel,
  SCREENSHOTS,
  widenSidebar
} from './lab';

/*
 * A training run from the panel, against a real JupyterLab and Docker engine: with a notebook
 * open, the user starts a run of it with parameters on an environment that is not built yet; the
 * run builds the environment first, succeeds, and its executed notebook opens with the injected
 * parameters and the outputs.
 */

const ENV_NAME = 'runtest';
const NOTEBOOK = 'train-run.ipynb';

function code(source: string, tags: string[] = []): object {
  return {
    cell_type: 'code',
    execution_count: null,
    metadata: { tags },
    outputs: [],
    source
  };
}

const TRAINING = {
  nbformat: 4,
  nbformat_minor: 4,
  metadata: {
    kernelspec: {
      name: 'python3',
      display_name: 'Python 3',
      language: 'python'
    }
  },
  cells: [
    { cell_type: 'markdown', metadata: {}, source: '# A training run' },
    code("alpha = 0.1\nname = 'nobody'", ['parameters']),
    code("print('hello', name, alpha)"),
    code('score = 1 - alpha / 10\nscore')
  ]
};

/** Shuts down every kernel the test's notebooks started. */
async function shutDownSessions(request: APIRequestContext): Promise<void> {
  const sessions = await (
    await request.get(`${BASE_URL}api/sessions`, { headers: AUTH })
  ).json();
  for (const session of sessions as { id: string }[]) {
    await request.delete(`${BASE_URL}api/sessions/${session.id}`, {
      headers: AUTH
    });
  }
}

test('run the open notebook with parameters from the panel', async ({
  page,
  request
}) => {
  // Given an environment that is not built yet, and a notebook with a parameters cell
  const old = await request.delete(`${API_URL}envs/${ENV_NAME}`, {
    headers: AUTH
  });
  expect([204, 404], await old.text()).toContain(old.status());
  const created = await request.post(`${API_URL}envs`, {
    headers: AUTH,
    data: { name: ENV_NAME }
  });
  expect(created.status(), await created.text()).toBe(201);
  const saved = await request.put(`${BASE_URL}api/contents/${NOTEBOOK}`, {
    headers: AUTH,
    data: { type: 'notebook', format: 'json', content: TRAINING }
  });
  expect(saved.ok(), await saved.text()).toBeTruthy();

  // When the user, with the notebook open, opens the Runs section of the environment
  await openLab(page, NOTEBOOK);
  await hideNotifications(page);
  await expect(page.locator('.jp-NotebookPanel:visible')).toBeVisible();
  await openPanel(page);
  await widenSidebar(page, 420);
  const card = page.getByTestId(`env-${ENV_NAME}`);
  await expect(card).toBeVisible();
  await card.getByTestId('runs').locator(':scope > summary').click();
  const form = card.getByTestId('run-form');
  // Then the form offers the open notebook
  await expect(form.getByTestId('run-kind-notebook')).toBeChecked();
  await expect(form.getByTestId('run-notebook')).toHaveValue(NOTEBOOK);

  // When the user sets parameters (a line the server cannot read is explained there) and starts it
  await form.getByTestId('run-parameters').fill('alpha 0.5');
  await form.getByTestId('run-start').click();
  await expect(form.getByTestId('field-error-parameters')).toBeVisible();
  await form.getByTestId('run-parameters').fill('alpha = 0.5\nname = "Ada"');
  await form.getByTestId('run-memory').fill('1g');
  await form.getByTestId('run-start').click();

  // Then the run appears, builds the environment first, and succeeds with its live log
  const newest = card.getByTestId('run-list').locator(':scope > li').first();
  await expect(newest).toBeVisible();
  const runId = (await newest.getAttribute('data-testid')) ?? '';
  const item = card.getByTestId(runId);
  await expect(item.getByTestId('run-log')).toContainText(
    `Environment ${ENV_NAME} is not built yet: building it first`,
    { timeout: 60_000 }
  );
  await expect(item).toHaveAttribute('data-state', 'succeeded', {
    timeout: BUILD_TIMEOUT
  });
  await expect(item.getByTestId('run-state')).toHaveText('succeeded');
  await expect(item.getByTestId('run-log')).toContainText('hello Ada 0.5');
  await expect(item.getByTestId('run-duration')).toHaveText(/\d s$/);
  // and the card shows the environment the run built
  await expect(card.getByTestId('env-state')).toHaveText('built');

  // When the user opens the executed notebook
  await item.getByTestId('run-open-output').click();
  // Then it shows the injected parameters after the parameters cell, and the outputs
  const executed = page.locator('.jp-NotebookPanel:visible');
  await expect(
    page.getByRole('tab', { name: /^train-run-[0-9a-f]{12}\.ipynb$/ })
  ).toHaveAttribute('aria-selected', 'true');
  await expect(executed.locator('.jp-Cell').nth(2)).toContainText(
    'name = "Ada"'
  );
  await expect(executed).toContainText('hello Ada 0.5');
  await expect(executed).toContainText('0.95');
  await page.screenshot({ path: path.join(SCREENSHOTS, 'panel-runs.png') });

  // And the same settings run again from the list
  await item.getByTestId('run-rerun').click();
  await expect(newest).not.toHaveAttribute('data-testid', runId);
  await expect(newest).toHaveAttribute('data-state', 'succeeded', {
    timeout: 120_000
  });
  await expect(card.getByTestId('run-list').locator(':scope > li')).toHaveCount(
    2
  );
  await shutDownSessions(request);
});
