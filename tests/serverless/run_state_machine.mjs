// Runs a rendered Step Functions definition locally with aws-local-stepfunctions, with its Lambda Tasks
// answered by a Python handler (`module:function`) and its `states:startExecution` Task recorded as a
// continuation that this script then starts itself, as Step Functions would.
//
// Usage: node run_state_machine.mjs REQUEST.json
// REQUEST: {
//   "definition_path": "rendered.asl.json",
//   "input": {...},
//   "handler": "module:function",
//   "python": ["/path/to/python", "bridge.py"],      // the bridge is given the handler as its last argument
//   "state_machine_arn": "arn:aws:states:...:stateMachine:name",
//   "max_executions": 10,
//   "wait_time_overrides_ms": {"StateName": 0},       // optional
//   "retry_interval_overrides_ms": {"StateName": 0}   // optional
// }
// Prints one JSON document to stdout: {"executions": [...], "handler_calls": N}.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

// aws-local-stepfunctions 3.x targets Node >= 22 and uses Promise.withResolvers (Node 22+) for Task timeouts.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const { StateMachine, ExecutionError } = await import('aws-local-stepfunctions');

const LAMBDA_INVOKE = 'arn:aws:states:::lambda:invoke';
const START_EXECUTION = 'arn:aws:states:::states:startExecution';

/** One long-lived Python process, like a warm Lambda container: one JSON line in, one JSON line out. */
class PythonHandler {
  constructor(command, handler) {
    this.child = spawn(command[0], [...command.slice(1), handler], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.lines = createInterface({ input: this.child.stdout })[Symbol.asyncIterator]();
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
    this.calls = 0;
    this.queue = Promise.resolve();
  }

  invoke(event) {
    // Serialised so that replies cannot be matched to the wrong request.
    const result = this.queue.then(() => this.#roundTrip(event));
    this.queue = result.catch(() => undefined);
    return result;
  }

  async #roundTrip(event) {
    this.calls += 1;
    this.child.stdin.write(`${JSON.stringify(event)}\n`);
    const next = await this.lines.next();
    if (next.done) {
      const code = await this.exited;
      throw new Error(`the Python handler process exited (code ${code}) before answering`);
    }
    return JSON.parse(next.value);
  }

  async close() {
    this.child.stdin.end();
    await this.exited;
  }
}

function taskError(name, cause) {
  // The library matches Retry/Catch on `error.name` and reports `message` as the cause.
  const error = new Error(cause);
  error.name = name;
  return error;
}

function lambdaInvoke(python) {
  return async (parameters) => {
    const reply = await python.invoke(parameters.Payload);
    if (reply.error !== undefined) {
      throw taskError(reply.error.name, reply.error.cause);
    }
    // The shape of the optimized `lambda:invoke` integration's result, so ResultSelector sees what AWS gives it.
    return { ExecutedVersion: '$LATEST', Payload: reply.result, StatusCode: 200 };
  };
}

function startExecution(record, stateMachineArn, executionIndex) {
  return async (parameters) => {
    record.push(parameters);
    const name = `continuation-${executionIndex + 1}-${record.length}`;
    return {
      ExecutionArn: `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`,
      StartDate: new Date().toISOString(),
    };
  };
}

function summariseEvent(event) {
  const summary = { type: event.type };
  if (event.state !== undefined) {
    summary.state = event.state.name;
    summary.state_type = event.state.type;
  }
  if (event.Error !== undefined) {
    summary.error = event.Error;
  }
  return summary;
}

async function runExecution(definition, input, options, index) {
  const python = options.python;
  const continuations = [];
  const handlers = {};
  for (const [name, state] of Object.entries(definition.States)) {
    if (state.Type !== 'Task') continue;
    if (state.Resource === LAMBDA_INVOKE) {
      handlers[name] = lambdaInvoke(python);
    } else if (state.Resource === START_EXECUTION) {
      handlers[name] = startExecution(continuations, options.stateMachineArn, index);
    } else {
      throw new Error(`Task ${name} has a resource this harness cannot stand in for: ${state.Resource}`);
    }
  }
  const executionName = `execution-${index}`;
  const machine = new StateMachine(definition, { validationOptions: { checkArn: true, checkPaths: true } });
  const execution = machine.run(input, {
    overrides: {
      taskResourceLocalHandlers: handlers,
      waitTimeOverrides: options.waitTimeOverrides,
      retryIntervalOverrides: options.retryIntervalOverrides,
    },
    context: {
      StateMachine: { Id: options.stateMachineArn, Name: options.stateMachineArn.split(':').pop() },
      Execution: {
        Id: `${options.stateMachineArn.replace(':stateMachine:', ':execution:')}:${executionName}`,
        Name: executionName,
      },
    },
  });
  const events = [];
  const collecting = (async () => {
    for await (const event of execution.eventLogs) {
      events.push(summariseEvent(event));
    }
  })();
  const record = { input, status: 'SUCCEEDED', output: null, error: null, cause: null, continuations };
  try {
    record.output = await execution.result;
  } catch (error) {
    if (!(error instanceof ExecutionError)) throw error;
    record.status = 'FAILED';
    record.error = error.cause?.name ?? 'Unknown';
    record.cause = error.cause?.message ?? null;
  }
  await collecting;
  record.events = events;
  return record;
}

async function main() {
  const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const definition = JSON.parse(readFileSync(request.definition_path, 'utf8'));
  const python = new PythonHandler(request.python, request.handler);
  const options = {
    python,
    stateMachineArn: request.state_machine_arn,
    waitTimeOverrides: request.wait_time_overrides_ms,
    retryIntervalOverrides: request.retry_interval_overrides_ms,
  };
  const executions = [];
  try {
    let input = request.input;
    for (let index = 0; index < request.max_executions; index += 1) {
      const execution = await runExecution(definition, input, options, index);
      executions.push(execution);
      if (execution.continuations.length === 0) break;
      if (execution.continuations.length > 1) {
        throw new Error(`execution ${index} asked for ${execution.continuations.length} continuations`);
      }
      const [continuation] = execution.continuations;
      if (continuation.StateMachineArn !== request.state_machine_arn) {
        throw new Error(`the continuation targets ${continuation.StateMachineArn}, not this state machine`);
      }
      // StartExecution takes its input as a JSON string; ASL may also give it as an object.
      input = typeof continuation.Input === 'string' ? JSON.parse(continuation.Input) : continuation.Input;
    }
  } finally {
    await python.close();
  }
  process.stdout.write(`${JSON.stringify({ executions, handler_calls: python.calls })}\n`);
}

await main();
