// Command godecode reads request bodies the way Ollama does, for the gateway's
// parser-differential test (SPEC §4.9).
//
// Each stdin line is {"path": "/api/chat", "body": "<base64>"}; each answer is one
// stdout line, in order:
//
//	{"error": null|"...", "model": "...", "num_predict": int|null, "num_ctx": int|null,
//	 "keep_alive_ns": int|null, "stream": bool|null}
//
// The body is decoded exactly as gin's ShouldBindJSON does (json.NewDecoder(body).Decode,
// so anything after the first value is ignored) into copies of the request types of
// Ollama's api/types.go (v0.33), whose JSON tags bind keys case-insensitively with
// Unicode simple folding, the last matching key winning. `options` stays a map whose
// keys match exactly; num_predict and num_ctx are read from it by Options.FromMap, also
// copied. Only the standard library is used, and nothing newer than Go 1.19, so
// Debian's golang-go builds it.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"strings"
	"time"
)

// ---- copied from ollama/ollama api/types.go (v0.33) ----------------------------------
// Differences: ToolCallFunctionArguments and ToolPropertiesMap are plain maps (Ollama
// wraps an ordered map, which decodes the same keys the same way), and the String,
// MarshalJSON and TypeScript helpers are left out.

type ImageData []byte

type GenerateRequest struct {
	Model           string          `json:"model"`
	Prompt          string          `json:"prompt"`
	Suffix          string          `json:"suffix"`
	System          string          `json:"system"`
	Template        string          `json:"template"`
	Context         []int           `json:"context,omitempty"`
	Stream          *bool           `json:"stream,omitempty"`
	Raw             bool            `json:"raw,omitempty"`
	Format          json.RawMessage `json:"format,omitempty"`
	KeepAlive       *Duration       `json:"keep_alive,omitempty"`
	Images          []ImageData     `json:"images,omitempty"`
	Options         map[string]any  `json:"options"`
	Think           *ThinkValue     `json:"think,omitempty"`
	Truncate        *bool           `json:"truncate,omitempty"`
	Shift           *bool           `json:"shift,omitempty"`
	DebugRenderOnly bool            `json:"_debug_render_only,omitempty"`
	Logprobs        bool            `json:"logprobs,omitempty"`
	TopLogprobs     int             `json:"top_logprobs,omitempty"`
}

type ChatRequest struct {
	Model           string          `json:"model"`
	Messages        []Message       `json:"messages"`
	Stream          *bool           `json:"stream,omitempty"`
	Format          json.RawMessage `json:"format,omitempty"`
	KeepAlive       *Duration       `json:"keep_alive,omitempty"`
	Tools           `json:"tools,omitempty"`
	Options         map[string]any `json:"options"`
	Think           *ThinkValue    `json:"think,omitempty"`
	Truncate        *bool          `json:"truncate,omitempty"`
	Shift           *bool          `json:"shift,omitempty"`
	DebugRenderOnly bool           `json:"_debug_render_only,omitempty"`
	Logprobs        bool           `json:"logprobs,omitempty"`
	TopLogprobs     int            `json:"top_logprobs,omitempty"`
}

type Tools []Tool

type Message struct {
	Role       string      `json:"role"`
	Content    string      `json:"content"`
	Thinking   string      `json:"thinking,omitempty"`
	Images     []ImageData `json:"images,omitempty"`
	ToolCalls  []ToolCall  `json:"tool_calls,omitempty"`
	ToolName   string      `json:"tool_name,omitempty"`
	ToolCallID string      `json:"tool_call_id,omitempty"`
}

func (m *Message) UnmarshalJSON(b []byte) error {
	type Alias Message
	var a Alias
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}

	*m = Message(a)
	m.Role = strings.ToLower(m.Role)
	return nil
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type ToolCallFunction struct {
	Index     int                       `json:"index"`
	Name      string                    `json:"name"`
	Arguments ToolCallFunctionArguments `json:"arguments"`
}

// ToolCallFunctionArguments: an ordered map in Ollama; keys match exactly either way.
type ToolCallFunctionArguments map[string]any

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

// PropertyType can be either a string or an array of strings
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}

	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

// ToolPropertiesMap: an ordered map in Ollama; keys match exactly either way.
type ToolPropertiesMap map[string]ToolProperty

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  *ToolPropertiesMap `json:"properties,omitempty"`
	Required    []string           `json:"required,omitempty"`
}

type ToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties *ToolPropertiesMap `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Options struct {
	Runner

	NumKeep          int      `json:"num_keep,omitempty"`
	Seed             int      `json:"seed,omitempty"`
	NumPredict       int      `json:"num_predict,omitempty"`
	TopK             int      `json:"top_k,omitempty"`
	TopP             float32  `json:"top_p,omitempty"`
	MinP             float32  `json:"min_p,omitempty"`
	TypicalP         float32  `json:"typical_p,omitempty"`
	RepeatLastN      int      `json:"repeat_last_n,omitempty"`
	Temperature      float32  `json:"temperature,omitempty"`
	RepeatPenalty    float32  `json:"repeat_penalty,omitempty"`
	PresencePenalty  float32  `json:"presence_penalty,omitempty"`
	FrequencyPenalty float32  `json:"frequency_penalty,omitempty"`
	Stop             []string `json:"stop,omitempty"`
}

type Runner struct {
	NumCtx          int   `json:"num_ctx,omitempty"`
	NumBatch        int   `json:"num_batch,omitempty"`
	NumGPU          int   `json:"num_gpu,omitempty"`
	MainGPU         *int  `json:"main_gpu,omitempty"`
	UseMMap         *bool `json:"use_mmap,omitempty"`
	NumThread       int   `json:"num_thread,omitempty"`
	DraftNumPredict int   `json:"draft_num_predict,omitempty"`
}

type EmbedRequest struct {
	Model      string         `json:"model"`
	Input      any            `json:"input"`
	KeepAlive  *Duration      `json:"keep_alive,omitempty"`
	Truncate   *bool          `json:"truncate,omitempty"`
	Dimensions int            `json:"dimensions,omitempty"`
	Options    map[string]any `json:"options"`
}

type EmbeddingRequest struct {
	Model     string         `json:"model"`
	Prompt    string         `json:"prompt"`
	KeepAlive *Duration      `json:"keep_alive,omitempty"`
	Options   map[string]any `json:"options"`
}

type ShowRequest struct {
	Model    string         `json:"model"`
	System   string         `json:"system"`
	Template string         `json:"template"`
	Verbose  bool           `json:"verbose"`
	Options  map[string]any `json:"options"`
	Name     string         `json:"name"`
}

// FromMap is Ollama's, but for the unknown-option warning (slog is newer than Go 1.19).
func (opts *Options) FromMap(m map[string]any) error {
	valueOpts := reflect.ValueOf(opts).Elem()
	typeOpts := reflect.TypeOf(opts).Elem()

	jsonOpts := make(map[string]reflect.StructField)
	for _, field := range reflect.VisibleFields(typeOpts) {
		jsonTag := strings.Split(field.Tag.Get("json"), ",")[0]
		if jsonTag != "" {
			jsonOpts[jsonTag] = field
		}
	}

	for key, val := range m {
		opt, ok := jsonOpts[key]
		if !ok {
			continue // Ollama: slog.Warn("invalid option provided", "option", key)
		}

		field := valueOpts.FieldByName(opt.Name)
		if field.IsValid() && field.CanSet() {
			if val == nil {
				continue
			}

			switch field.Kind() {
			case reflect.Int:
				switch t := val.(type) {
				case int64:
					field.SetInt(t)
				case float64:
					// when JSON unmarshals numbers, it uses float64, not int
					field.SetInt(int64(t))
				default:
					return fmt.Errorf("option %q must be of type integer", key)
				}
			case reflect.Bool:
				val, ok := val.(bool)
				if !ok {
					return fmt.Errorf("option %q must be of type boolean", key)
				}
				field.SetBool(val)
			case reflect.Float32:
				val, ok := val.(float64)
				if !ok {
					return fmt.Errorf("option %q must be of type float32", key)
				}
				field.SetFloat(val)
			case reflect.String:
				val, ok := val.(string)
				if !ok {
					return fmt.Errorf("option %q must be of type string", key)
				}
				field.SetString(val)
			case reflect.Slice:
				val, ok := val.([]any)
				if !ok {
					return fmt.Errorf("option %q must be of type array", key)
				}
				slice := make([]string, len(val))
				for i, item := range val {
					str, ok := item.(string)
					if !ok {
						return fmt.Errorf("option %q must be of an array of strings", key)
					}
					slice[i] = str
				}
				field.Set(reflect.ValueOf(slice))
			case reflect.Pointer:
				switch field.Type().Elem().Kind() {
				case reflect.Bool:
					val, ok := val.(bool)
					if !ok {
						return fmt.Errorf("option %q must be of type boolean", key)
					}
					field.Set(reflect.ValueOf(&val))
				case reflect.Int:
					var i int
					switch t := val.(type) {
					case int64:
						i = int(t)
					case float64:
						i = int(t)
					default:
						return fmt.Errorf("option %q must be of type integer", key)
					}
					field.Set(reflect.ValueOf(&i))
				default:
					return fmt.Errorf("unknown type loading config params: %v %v", field.Kind(), field.Type())
				}
			default:
				return fmt.Errorf("unknown type loading config params: %v", field.Kind())
			}
		}
	}

	return nil
}

// ThinkValue represents a value that can be a boolean or a string ("high", "medium", "low", "max")
type ThinkValue struct {
	Value interface{}
}

func (t *ThinkValue) UnmarshalJSON(data []byte) error {
	var b bool
	if err := json.Unmarshal(data, &b); err == nil {
		t.Value = b
		return nil
	}

	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		if s != "high" && s != "medium" && s != "low" && s != "max" {
			return fmt.Errorf("invalid think value: %q (must be \"high\", \"medium\", \"low\", \"max\", true, or false)", s)
		}
		t.Value = s
		return nil
	}

	return fmt.Errorf("think must be a boolean or string (\"high\", \"medium\", \"low\", \"max\", true, or false)")
}

type Duration struct {
	time.Duration
}

func (d *Duration) UnmarshalJSON(b []byte) (err error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}

	d.Duration = 5 * time.Minute

	switch t := v.(type) {
	case float64:
		if t < 0 {
			d.Duration = time.Duration(math.MaxInt64)
		} else {
			d.Duration = time.Duration(t * float64(time.Second))
		}
	case string:
		d.Duration, err = time.ParseDuration(t)
		if err != nil {
			return err
		}
		if d.Duration < 0 {
			d.Duration = time.Duration(math.MaxInt64)
		}
	default:
		return fmt.Errorf("Unsupported type: '%s'", reflect.TypeOf(v))
	}

	return nil
}

// ---- the reading the test compares ------------------------------------------------

type input struct {
	Path string `json:"path"`
	Body []byte `json:"body"` // base64 in the line, as encoding/json reads []byte
}

type reading struct {
	Error       *string `json:"error"`
	Model       *string `json:"model"`
	NumPredict  *int64  `json:"num_predict"`
	NumCtx      *int64  `json:"num_ctx"`
	KeepAliveNs *int64  `json:"keep_alive_ns"`
	Stream      *bool   `json:"stream"`
}

// bind is gin's ShouldBindJSON (binding.decodeJSON): one Decode of the body, whatever
// follows the first value.
func bind(body []byte, req any) error {
	return json.NewDecoder(bytes.NewReader(body)).Decode(req)
}

func failed(err error) reading {
	text := err.Error()
	return reading{Error: &text}
}

// fromOptions is what Ollama's runner gets for num_predict and num_ctx: the keys taken
// exactly, through Options.FromMap; null when the key is absent or null.
func fromOptions(r *reading, m map[string]any) error {
	var opts Options
	if err := opts.FromMap(m); err != nil {
		return err
	}
	if v, ok := m["num_predict"]; ok && v != nil {
		n := int64(opts.NumPredict)
		r.NumPredict = &n
	}
	if v, ok := m["num_ctx"]; ok && v != nil {
		n := int64(opts.NumCtx)
		r.NumCtx = &n
	}
	return nil
}

func keepAlive(d *Duration) *int64 {
	if d == nil {
		return nil
	}
	ns := int64(d.Duration)
	return &ns
}

func read(path string, body []byte) reading {
	var r reading
	var options map[string]any
	var err error
	switch path {
	case "/api/chat":
		var req ChatRequest
		err = bind(body, &req)
		r.Model, r.KeepAliveNs, r.Stream, options = &req.Model, keepAlive(req.KeepAlive), req.Stream, req.Options
	case "/api/generate":
		var req GenerateRequest
		err = bind(body, &req)
		r.Model, r.KeepAliveNs, r.Stream, options = &req.Model, keepAlive(req.KeepAlive), req.Stream, req.Options
	case "/api/embed":
		var req EmbedRequest
		err = bind(body, &req)
		r.Model, r.KeepAliveNs, options = &req.Model, keepAlive(req.KeepAlive), req.Options
	case "/api/embeddings":
		var req EmbeddingRequest
		err = bind(body, &req)
		r.Model, r.KeepAliveNs, options = &req.Model, keepAlive(req.KeepAlive), req.Options
	case "/api/show":
		var req ShowRequest
		err = bind(body, &req)
		// ShowHandler: the deprecated `name` when `model` is empty.
		model := req.Model
		if model == "" {
			model = req.Name
		}
		r.Model, options = &model, req.Options
	default:
		return failed(fmt.Errorf("godecode: no request type for path %q", path))
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return failed(errors.New("missing request body"))
		}
		return failed(err)
	}
	if err := fromOptions(&r, options); err != nil {
		return failed(err)
	}
	return r
}

func main() {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	encoder := json.NewEncoder(out)
	for {
		line, err := in.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var job input
			var answer reading
			if jerr := json.Unmarshal(line, &job); jerr != nil {
				answer = failed(fmt.Errorf("godecode: bad input line: %w", jerr))
			} else {
				answer = read(job.Path, job.Body)
			}
			if eerr := encoder.Encode(answer); eerr != nil {
				fmt.Fprintln(os.Stderr, "godecode:", eerr)
				os.Exit(1)
			}
			// One answer per line as soon as it is known: the caller waits for it.
			if ferr := out.Flush(); ferr != nil {
				fmt.Fprintln(os.Stderr, "godecode:", ferr)
				os.Exit(1)
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "godecode:", err)
			os.Exit(1)
		}
	}
}
