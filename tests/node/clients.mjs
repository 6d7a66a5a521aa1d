// The npm `openai` and `ollama` SDKs against a running gateway, as a Node.js program
// would use them. `node clients.mjs openai|ollama` reads the gateway's URL and keys as
// JSON on stdin and prints what the SDK returned and raised, as JSON on stdout; the
// Python test (tests/e2e/test_foreign_clients.py) judges it.
import { Ollama } from "ollama";
import OpenAI from "openai";

const CHAT = "llama3.2";
const EMBED = "all-minilm";
const HELLO = [{ role: "user", content: "Say hello" }];

// The OpenAI SDK's error classes, most specific first.
const OPENAI_ERRORS = [
  "AuthenticationError",
  "PermissionDeniedError",
  "RateLimitError",
  "NotFoundError",
  "BadRequestError",
  "InternalServerError",
  "APIConnectionError",
  "APIError",
];

/** What `call` raised, or null when it returned. */
async function raised(call, describe) {
  try {
    await call();
  } catch (error) {
    return describe(error);
  }
  return null;
}

function openaiError(error) {
  return {
    class: error.constructor.name,
    is: OPENAI_ERRORS.filter((name) => error instanceof OpenAI[name]),
    status: error.status ?? null,
    code: error.code ?? null,
    type: error.type ?? null,
    retry_after: error.headers?.get("retry-after") ?? null,
  };
}

function ollamaError(error) {
  // ollama-js does not export ResponseError; its name and status_code are its API.
  return {
    class: error.constructor.name,
    name: error.name,
    status_code: error.status_code ?? null,
    error: error.error ?? error.message,
  };
}

async function openai({ url, key, narrow, limited, wrong }) {
  const sdk = (apiKey) => new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0 });
  const api = sdk(key);
  const whole = await api.chat.completions.create({ model: CHAT, messages: HELLO });
  const stream = await api.chat.completions.create({
    model: CHAT,
    messages: HELLO,
    stream: true,
    stream_options: { include_usage: true },
  });
  const streamed = { content: "", ids: [], finish_reasons: [], usage: null };
  for await (const chunk of stream) {
    streamed.ids.push(chunk.id);
    for (const choice of chunk.choices) {
      streamed.content += choice.delta.content ?? "";
      if (choice.finish_reason) streamed.finish_reasons.push(choice.finish_reason);
    }
    if (chunk.usage) streamed.usage = chunk.usage;
  }
  const completion = await api.completions.create({ model: CHAT, prompt: "Once", max_tokens: 3 });
  const embedded = await api.embeddings.create({ model: EMBED, input: ["a", "b"] });
  const models = [];
  for await (const model of api.models.list()) models.push(model.id);
  const chat = (apiKey) => sdk(apiKey).chat.completions.create({ model: CHAT, messages: HELLO });
  const first = await chat(limited);
  return {
    whole: {
      object: whole.object,
      content: whole.choices[0].message.content,
      finish_reason: whole.choices[0].finish_reason,
      usage: whole.usage,
    },
    streamed: { ...streamed, ids: [...new Set(streamed.ids)] },
    completion: {
      text: completion.choices[0].text,
      finish_reason: completion.choices[0].finish_reason,
      usage: completion.usage,
    },
    embeddings: {
      count: embedded.data.length,
      dimensions: embedded.data[0].embedding.length,
      usage: embedded.usage,
    },
    models,
    errors: {
      wrong_key: await raised(() => chat(wrong), openaiError),
      wrong_key_streamed: await raised(
        () => sdk(wrong).chat.completions.create({ model: CHAT, messages: HELLO, stream: true }),
        openaiError,
      ),
      model_not_allowed: await raised(() => chat(narrow), openaiError),
      rate_limited: await raised(() => chat(limited), openaiError),
    },
    limited_first: first.choices[0].message.content,
  };
}

async function ollama({ url, key, narrow, limited, wrong }) {
  const client = (apiKey) => new Ollama({ host: url, headers: { Authorization: `Bearer ${apiKey}` } });
  const api = client(key);
  const whole = await api.chat({ model: CHAT, messages: HELLO });
  const streamed = { content: "", done: false, eval_count: null, prompt_eval_count: null };
  for await (const part of await api.chat({ model: CHAT, messages: HELLO, stream: true })) {
    streamed.content += part.message.content;
    if (part.done) {
      streamed.done = true;
      streamed.eval_count = part.eval_count;
      streamed.prompt_eval_count = part.prompt_eval_count;
    }
  }
  const generated = await api.generate({ model: CHAT, prompt: "Once", options: { num_predict: 3 } });
  const embedded = await api.embed({ model: EMBED, input: ["a", "b"] });
  const listed = await api.list();
  const chat = (apiKey) => client(apiKey).chat({ model: CHAT, messages: HELLO });
  const first = await chat(limited);
  return {
    whole: {
      content: whole.message.content,
      done: whole.done,
      done_reason: whole.done_reason,
      eval_count: whole.eval_count,
      prompt_eval_count: whole.prompt_eval_count,
    },
    streamed,
    generated: {
      response: generated.response,
      done_reason: generated.done_reason,
      eval_count: generated.eval_count,
    },
    embed: {
      count: embedded.embeddings.length,
      dimensions: embedded.embeddings[0].length,
      prompt_eval_count: embedded.prompt_eval_count,
    },
    models: listed.models.map((model) => model.name),
    errors: {
      wrong_key: await raised(() => chat(wrong), ollamaError),
      wrong_key_streamed: await raised(
        () => client(wrong).chat({ model: CHAT, messages: HELLO, stream: true }),
        ollamaError,
      ),
      model_not_allowed: await raised(() => chat(narrow), ollamaError),
      rate_limited: await raised(() => chat(limited), ollamaError),
    },
    limited_first: first.message.content,
  };
}

const programs = { openai, ollama };
const program = programs[process.argv[2]];
if (!program) {
  console.error(`usage: node clients.mjs ${Object.keys(programs).join("|")} < config.json`);
  process.exit(2);
}
let input = "";
for await (const piece of process.stdin) input += piece;
process.stdout.write(`${JSON.stringify(await program(JSON.parse(input)))}\n`);
