"""How the Terraform module is wired, read with python-hcl2: least privilege, the state machine file, variables."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pydantic_s3_cas.probe import PROBE_KEY_PREFIX

from .stepfunctions import ASL_TEMPLATE, MODULE_DIR, TEST_VARIABLES, render_template, template_variables
from .terraform_hcl import TERRAFORM_DIR, example, expression, module

TERRAFORM = shutil.which('terraform')
needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason='the terraform binary is not installed')


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of an aws_iam_policy_document, the bodies of dynamic blocks included."""
    found = list(document.get('statement', []))
    for dynamic in document.get('dynamic', []):
        found.extend(dynamic['statement']['content'])
    return found


def lambda_statements() -> list[dict[str, Any]]:
    return statements(module().data['aws_iam_policy_document']['lambda'])


def statement(sid: str, of: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [s for s in of if s.get('sid') == sid]
    return found


def resolve_local(value: str) -> str:
    """`${local.x}` replaced by the local's own expression, once."""
    match = re.fullmatch(r'\$\{local\.(\w+)\}', value)
    return module().locals[match.group(1)] if match else value


# --- the Lambda role ---------------------------------------------------------------------------------------------


def test_lambda_policy_grants_object_access_only_below_the_prefix() -> None:
    s3_statements = [s for s in lambda_statements() if any(a.startswith('s3:') for a in s['actions'])]
    object_actions = {a for s in s3_statements for a in s['actions'] if a != 's3:ListBucket'}
    assert object_actions == {'s3:GetObject', 's3:PutObject', 's3:DeleteObject'}

    read_write = statement('ReadWriteRunObjects', s3_statements)
    assert sorted(read_write['actions']) == ['s3:GetObject', 's3:PutObject']
    assert [resolve_local(r) for r in read_write['resources']] == ['${aws_s3_bucket.runs.arn}/${var.s3_prefix}*']
    assert 'condition' not in read_write


def test_lambda_may_delete_only_the_endpoint_checks_probe_objects() -> None:
    # verify_endpoint=True deletes its probe; no statement may let the function delete a run.
    deleting = [s for s in lambda_statements() if 's3:DeleteObject' in s['actions']]
    [probes] = deleting
    assert probes['actions'] == ['s3:DeleteObject']
    assert 'condition' not in probes
    assert [resolve_local(r) for r in probes['resources']] == [
        f'${{aws_s3_bucket.runs.arn}}/${{var.s3_prefix}}{PROBE_KEY_PREFIX}*'
    ]


def test_lambda_policy_lists_the_bucket_only_under_the_prefix() -> None:
    list_statements = [s for s in lambda_statements() if 's3:ListBucket' in s['actions']]
    [listing] = list_statements
    assert listing['actions'] == ['s3:ListBucket']
    assert [resolve_local(r) for r in listing['resources']] == ['${aws_s3_bucket.runs.arn}']
    assert listing['condition'] == [{'test': 'StringLike', 'variable': 's3:prefix', 'values': ['${var.s3_prefix}*']}]


def test_lambda_policy_has_no_wildcard_action_or_resource() -> None:
    for s in lambda_statements():
        assert s.get('effect', 'Allow') == 'Allow'
        assert 'not_actions' not in s
        assert 'not_resources' not in s
        for action in s['actions']:
            assert '*' not in action, action
        for resource in s['resources']:
            assert resource != '*'
            # Only the object ARN may end in a wildcard, and only after the prefix.
            resolved = resolve_local(resource)
            assert '*' not in resolved or resolved in {
                '${aws_s3_bucket.runs.arn}/${var.s3_prefix}*',
                f'${{aws_s3_bucket.runs.arn}}/${{var.s3_prefix}}{PROBE_KEY_PREFIX}*',
                '${aws_cloudwatch_log_group.lambda.arn}:*',
            }, resolved


def test_lambda_logs_only_to_its_own_log_group() -> None:
    logs = [s for s in lambda_statements() if any(a.startswith('logs:') for a in s['actions'])]
    [own] = logs
    assert sorted(own['actions']) == ['logs:CreateLogStream', 'logs:PutLogEvents']
    assert own['resources'] == ['${aws_cloudwatch_log_group.lambda.arn}:*']
    log_group = module().resource('aws_cloudwatch_log_group', 'lambda')
    assert resolve_local(log_group['name']) == '/aws/lambda/${local.function_name}'
    assert module().resource('aws_lambda_function', 'worker')['function_name'] == '${local.function_name}'


def test_optional_lambda_grants_are_scoped() -> None:
    kms = statement('UseBucketKeyThroughS3', lambda_statements())
    assert sorted(kms['actions']) == ['kms:Decrypt', 'kms:GenerateDataKey']
    assert kms['condition'][0]['variable'] == 'kms:ViaService'
    sqs = statement('ConsumeStepQueue', lambda_statements())
    assert all(a.startswith('sqs:') for a in sqs['actions'])
    dynamics = module().data['aws_iam_policy_document']['lambda']['dynamic']
    assert {expression(d['statement']['for_each']) for d in dynamics} == {
        'var.kms_key_arn == null ? [] : [var.kms_key_arn]',
        'var.enable_sqs ? [aws_sqs_queue.steps[0].arn] : []',
    }


def test_lambda_role_gets_no_other_policies() -> None:
    m = module()
    role_policies = [
        body for body in m.resources['aws_iam_role_policy'].values() if body['role'] == '${aws_iam_role.lambda.id}'
    ]
    assert [p['policy'] for p in role_policies] == ['${data.aws_iam_policy_document.lambda.json}']
    attachments = [
        body
        for body in m.resources['aws_iam_role_policy_attachment'].values()
        if body['role'] == '${aws_iam_role.lambda.name}'
    ]
    assert [a['policy_arn'] for a in attachments] == ['arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess']
    assert 'managed_policy_arns' not in m.resource('aws_iam_role', 'lambda')


# --- the state machine -------------------------------------------------------------------------------------------


def templatefile_call() -> tuple[Path, str]:
    definition = module().resource('aws_sfn_state_machine', 'runner')['definition']
    match = re.fullmatch(r'\$\{templatefile\("\$\{path\.module\}/([^"]+)", \{(.*)\}\)\}', definition, flags=re.DOTALL)
    assert match is not None, definition
    return (MODULE_DIR / match.group(1)).resolve(), match.group(2)


def test_terraform_templates_the_file_the_local_execution_tests_run() -> None:
    path, _ = templatefile_call()
    assert path == ASL_TEMPLATE.resolve()


def test_templatefile_supplies_exactly_the_template_variables() -> None:
    _, arguments = templatefile_call()
    supplied = dict(re.findall(r'(\w+) = ([^,]+)', arguments))
    assert set(supplied) == template_variables(ASL_TEMPLATE.read_text()) == set(TEST_VARIABLES)
    assert supplied['function_arn'] == 'aws_lambda_function.worker.arn'
    assert supplied['busy_wait_seconds'] == 'var.busy_wait_seconds'
    assert supplied['max_iterations_per_execution'] == 'var.max_iterations_per_execution'
    assert supplied['task_timeout_seconds'].startswith('var.lambda_timeout + ')


def test_state_machine_role_invokes_the_worker_and_starts_only_itself() -> None:
    m = module()
    role_statements = statements(m.data['aws_iam_policy_document']['state_machine'])
    invoke = statement('InvokeWorker', role_statements)
    assert invoke['actions'] == ['lambda:InvokeFunction']
    assert invoke['resources'] == ['${aws_lambda_function.worker.arn}', '${aws_lambda_function.worker.arn}:*']
    continue_ = statement('ContinueAsNewExecution', role_statements)
    assert continue_['actions'] == ['states:StartExecution']
    assert continue_['resources'] == ['${local.state_machine_arn}']
    # Built from name, region and account: reading it from the state machine would be a dependency cycle.
    arn = m.locals['state_machine_arn']
    assert 'aws_sfn_state_machine' not in arn
    assert arn == (
        'arn:${local.partition}:states:${local.region}:${local.account_id}:stateMachine:${local.state_machine_name}'
    )
    runner = m.resource('aws_sfn_state_machine', 'runner')
    assert runner['name'] == '${local.state_machine_name}'
    assert runner['type'] == 'STANDARD'
    assert runner['role_arn'] == '${aws_iam_role.state_machine.arn}'
    # Only the log delivery actions, which take no resource ARN, may use "*".
    for s in role_statements:
        if '*' in s['resources']:
            assert s['sid'] == 'DeliverLogs'
            assert all(a.startswith('logs:') for a in s['actions'])


def test_state_machine_logs_to_its_own_log_group() -> None:
    runner = module().resource('aws_sfn_state_machine', 'runner')
    [logging] = runner['logging_configuration']
    assert logging['log_destination'] == '${aws_cloudwatch_log_group.state_machine.arn}:*'
    assert logging['level'] == '${var.state_machine_log_level}'


@needs_terraform
def test_python_rendering_matches_terraform_templatefile(tmp_path: Path) -> None:
    # `terraform console` evaluates templatefile without providers or init, so this runs offline.
    arguments = ', '.join(
        f'{name} = {json.dumps(value) if isinstance(value, str) else value}' for name, value in TEST_VARIABLES.items()
    )
    expression_ = f'jsonencode(jsondecode(templatefile("{ASL_TEMPLATE}", {{{arguments}}})))'
    completed = subprocess.run(
        [str(TERRAFORM), 'console'],
        input=expression_,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={'TF_CLI_CONFIG_FILE': '/dev/null', 'CHECKPOINT_DISABLE': '1', 'PATH': '/usr/bin:/bin'},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    # The console prints the string as an HCL literal, which for this content is also a JSON string literal.
    from_terraform = json.loads(json.loads(completed.stdout.strip()))
    from_python = json.loads(render_template(ASL_TEMPLATE.read_text(), TEST_VARIABLES))
    assert from_terraform == from_python


# --- variables, outputs and the rest of the module ---------------------------------------------------------------


def test_function_resource_uses_its_variables() -> None:
    function = module().resource('aws_lambda_function', 'worker')
    assert function['runtime'] == 'python3.12'
    assert function['memory_size'] == '${var.lambda_memory_size}'
    assert function['timeout'] == '${var.lambda_timeout}'
    assert function['architectures'] == ['${var.lambda_architecture}']
    assert function['handler'] == '${var.lambda_handler}'
    assert function['filename'] == '${var.lambda_zip_path}'
    assert function['source_code_hash'] == '${filebase64sha256(var.lambda_zip_path)}'
    assert function['reserved_concurrent_executions'] == '${var.lambda_reserved_concurrency}'
    [environment] = function['environment']
    variables = environment['variables']
    # Crash recovery on by default: a claim older than the function's timeout plus a minute is a dead
    # invocation's. A default only: lambda_environment comes after it, and the bucket and prefix after that.
    assert variables.startswith(
        '${merge({PYDANTIC_GRAPH_S3_RECLAIM_AFTER = tostring(local.reclaim_after_seconds)}, var.lambda_environment, {'
    )
    assert module().locals['reclaim_after_seconds'] == '${var.lambda_timeout + 60}'
    assert 'PYDANTIC_GRAPH_S3_BUCKET = aws_s3_bucket.runs.id' in variables
    assert 'PYDANTIC_GRAPH_S3_PREFIX = var.s3_prefix' in variables


@pytest.mark.parametrize('load', [module, example], ids=['module', 'count-down'])
def test_every_variable_is_described_validated_and_used(load: Any) -> None:
    m = load()
    elsewhere = m.text_without('variables.tf')
    for name, variable in m.variables.items():
        assert len(variable.get('description', '')) > 10, f'{name} has no description'
        assert 'type' in variable, f'{name} has no type'
        if variable['type'] != 'bool':
            assert variable.get('validation'), f'{name} has no validation'
        assert re.search(rf'\bvar\.{name}\b', elsewhere), f'variable {name} is declared but never used'


def test_every_referenced_variable_is_declared() -> None:
    m = module()
    referenced = set(re.findall(r'\bvar\.(\w+)', '\n'.join(m.texts.values())))
    assert referenced == set(m.variables)


@pytest.mark.parametrize('load', [module, example], ids=['module', 'count-down'])
def test_every_output_is_described(load: Any) -> None:
    for name, output in load().outputs.items():
        assert len(output.get('description', '')) > 10, f'output {name} has no description'


def test_module_provides_the_outputs_callers_need() -> None:
    assert {'bucket_name', 'function_name', 'function_arn', 'state_machine_arn', 'queue_url'} <= set(module().outputs)


def test_bucket_is_private_versioned_encrypted_and_tls_only() -> None:
    m = module()
    access = m.resource('aws_s3_bucket_public_access_block', 'runs')
    for setting in ('block_public_acls', 'block_public_policy', 'ignore_public_acls', 'restrict_public_buckets'):
        assert access[setting] is True
    assert m.resource('aws_s3_bucket_versioning', 'runs')['versioning_configuration'] == [{'status': 'Enabled'}]
    [rule] = m.resource('aws_s3_bucket_server_side_encryption_configuration', 'runs')['rule']
    [default] = rule['apply_server_side_encryption_by_default']
    assert default['sse_algorithm'] == '${var.kms_key_arn == null ? "AES256" : "aws:kms"}'
    assert default['kms_master_key_id'] == '${var.kms_key_arn}'
    [deny] = m.data['aws_iam_policy_document']['bucket']['statement']
    assert deny['effect'] == 'Deny'
    assert deny['condition'] == [{'test': 'Bool', 'variable': 'aws:SecureTransport', 'values': ['false']}]


def test_lifecycle_expires_runs_under_the_prefix_and_aborts_uploads() -> None:
    rules = {r['id']: r for r in module().resource('aws_s3_bucket_lifecycle_configuration', 'runs')['rule']}
    expire = rules['expire-runs']
    assert expire['filter'] == [{'prefix': '${var.s3_prefix}'}]
    assert expire['expiration'] == [{'days': '${var.run_expiration_days}'}]
    assert expire['noncurrent_version_expiration'] == [{'noncurrent_days': '${var.noncurrent_version_expiration_days}'}]
    assert any('abort_incomplete_multipart_upload' in r for r in rules.values())


def test_queue_has_a_dead_letter_queue_and_reports_partial_batch_failures() -> None:
    m = module()
    steps = m.resource('aws_sqs_queue', 'steps')
    assert 'aws_sqs_queue.dead_letters[0].arn' in steps['redrive_policy']
    assert 'var.sqs_max_receive_count' in steps['redrive_policy']
    mapping = m.resource('aws_lambda_event_source_mapping', 'steps')
    assert mapping['function_response_types'] == ['ReportBatchItemFailures']
    assert mapping['event_source_arn'] == '${aws_sqs_queue.steps[0].arn}'
    for resource in (steps, m.resource('aws_sqs_queue', 'dead_letters'), mapping):
        assert resource['count'] == '${var.enable_sqs ? 1 : 0}'


def test_example_calls_the_module_by_relative_path() -> None:
    [call] = example().modules.values()
    assert (example().directory / call['source']).resolve() == MODULE_DIR.resolve()
    assert call['lambda_handler'] == 'pydantic_graph_s3.examples.count_down.handler'
    assert 'provider' in example().texts['versions.tf']


def test_every_checkov_skip_is_justified() -> None:
    skips = 0
    for path in TERRAFORM_DIR.rglob('*.tf'):
        for line in path.read_text().splitlines():
            if 'checkov:skip' not in line:
                continue
            skips += 1
            match = re.fullmatch(r'\s*#checkov:skip=(CKV2?_AWS_\d+):(.{20,})', line)
            assert match is not None, f'{path.name}: a skip without a reason: {line.strip()}'
    assert skips > 0


@needs_terraform
def test_terraform_fmt_is_clean() -> None:
    completed = subprocess.run(
        [str(TERRAFORM), 'fmt', '-check', '-recursive', '-diff', str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        env={'TF_CLI_CONFIG_FILE': '/dev/null', 'CHECKPOINT_DISABLE': '1', 'PATH': '/usr/bin:/bin'},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
