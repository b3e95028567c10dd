// The core API the stock server lacks: /apis and /api discovery, and small
// in-memory stores (with a journal) for core v1 namespaces and events.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	listers "k8s.io/apiextensions-apiserver/pkg/client/listers/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapifilters "k8s.io/apiserver/pkg/endpoints/filters"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
)

// coreHandler answers what no upstream handler claims.
type coreHandler struct {
	crds       listers.CustomResourceDefinitionLister
	namespaces *store
	events     *store

	// authorizer and rules answer the reviews (reviews.go).
	authorizer authorizer.Authorizer
	rules      authorizer.RuleResolver
}

func newCoreHandler() *coreHandler {
	return &coreHandler{
		namespaces: newStore("Namespace", false, 0),
		events:     newStore("Event", true, 500000),
	}
}

// journalEntry is one change to a store, as appended to the core-store file.
type journalEntry struct {
	Kind string `json:"kind"`
	Op   string `json:"op"` // put, delete, drop (a namespace's objects)
	Key  string `json:"key"`
	Obj  object `json:"obj,omitempty"`
}

// journal appends changes to a file, so a restarted server has the same objects.
type journal struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (j *journal) write(entry journalEntry) {
	if j == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_ = j.enc.Encode(entry)
}

// openJournal replays the file into the stores, then appends every later change to it.
func (h *coreHandler) openJournal(path string) error {
	stores := map[string]*store{h.namespaces.kind: h.namespaces, h.events.kind: h.events}
	if data, err := os.ReadFile(path); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			var entry journalEntry
			if line == "" || json.Unmarshal([]byte(line), &entry) != nil {
				continue
			}
			if s := stores[entry.Kind]; s != nil {
				s.replay(entry)
			}
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	j := &journal{enc: json.NewEncoder(f)}
	for _, s := range stores {
		s.journal = j
	}
	return nil
}

func (h *coreHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if h.serveReviewGroup(w, r, parts) {
		return
	}
	switch {
	case path == "/apis":
		h.serveGroups(w)
	case path == "/api":
		writeJSON(w, http.StatusOK, &metav1.APIVersions{
			TypeMeta: metav1.TypeMeta{Kind: "APIVersions"},
			Versions: []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
				{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host},
			},
		})
	case path == "/api/v1":
		writeJSON(w, http.StatusOK, coreResources())
	case len(parts) >= 3 && parts[0] == "api" && parts[1] == "v1":
		h.serveCore(w, r, parts[2:])
	case !genericapifilters.NoMuxAndDiscoveryIncompleteKey(r.Context()):
		// As kube-apiserver does: while the CRDs are still being loaded, an unknown
		// path may yet be served, so it is 503 (retry), not 404 (gone).
		w.Header().Set("Retry-After", "1")
		writeStatus(w, http.StatusServiceUnavailable, "ServiceUnavailable",
			"the request may be retried after the server has loaded all its resources")
	default:
		writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the server could not find the requested resource (%s)", r.URL.Path))
	}
}

// serveGroups lists apiextensions.k8s.io, the review groups and every
// established CRD group with its served versions, highest (kube-aware order) first.
func (h *coreHandler) serveGroups(w http.ResponseWriter) {
	groups := map[string]map[string]bool{"apiextensions.k8s.io": {"v1": true}}
	for name := range reviewGroups {
		groups[name] = map[string]bool{"v1": true}
	}
	if h.crds != nil {
		crds, err := h.crds.List(labels.Everything())
		if err != nil {
			writeStatus(w, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		for _, crd := range crds {
			if !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if !v.Served {
					continue
				}
				if groups[crd.Spec.Group] == nil {
					groups[crd.Spec.Group] = map[string]bool{}
				}
				groups[crd.Spec.Group][v.Name] = true
			}
		}
	}
	names := make([]string, 0, len(groups))
	for name := range groups {
		names = append(names, name)
	}
	sort.Strings(names)
	list := &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}}
	for _, name := range names {
		versions := make([]string, 0, len(groups[name]))
		for v := range groups[name] {
			versions = append(versions, v)
		}
		sort.Slice(versions, func(i, j int) bool {
			return version.CompareKubeAwareVersionStrings(versions[i], versions[j]) > 0
		})
		group := metav1.APIGroup{Name: name}
		for _, v := range versions {
			group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{GroupVersion: name + "/" + v, Version: v})
		}
		group.PreferredVersion = group.Versions[0]
		list.Groups = append(list.Groups, group)
	}
	writeJSON(w, http.StatusOK, list)
}

func coreResources() *metav1.APIResourceList {
	verbs := metav1.Verbs{"create", "delete", "get", "list", "patch", "update", "watch"}
	return &metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: "v1",
		APIResources: []metav1.APIResource{
			{Name: "namespaces", SingularName: "namespace", Namespaced: false, Kind: "Namespace", Verbs: verbs, ShortNames: []string{"ns"}},
			{Name: "events", SingularName: "event", Namespaced: true, Kind: "Event", Verbs: verbs, ShortNames: []string{"ev"}},
		},
	}
}

// serveCore routes /api/v1/... paths: namespaces/{ns}, namespaces/{ns}/events[/{name}], events.
func (h *coreHandler) serveCore(w http.ResponseWriter, r *http.Request, parts []string) {
	switch {
	case len(parts) == 1 && parts[0] == "namespaces":
		h.namespaces.serve(w, r, "", "")
	case len(parts) == 2 && parts[0] == "namespaces":
		h.namespaces.serve(w, r, "", parts[1])
		if r.Method == http.MethodDelete && !dryRun(r) {
			h.events.dropNamespace(parts[1])
		}
	case len(parts) == 1 && parts[0] == "events":
		h.events.serve(w, r, "", "")
	case len(parts) == 3 && parts[0] == "namespaces" && parts[2] == "events":
		h.events.serve(w, r, parts[1], "")
	case len(parts) == 4 && parts[0] == "namespaces" && parts[2] == "events":
		h.events.serve(w, r, parts[1], parts[3])
	default:
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
	}
}

type object = map[string]interface{}

type watchEvent struct {
	Type   string `json:"type"`
	Object object `json:"object"`
}

// store keeps objects of one kind in memory, in creation order, with
// resourceVersions, selectors and a simple watch. It is bounded: past limit
// objects, the oldest are dropped (as an events TTL would).
type store struct {
	kind       string
	namespaced bool
	limit      int

	journal *journal

	mu       sync.Mutex
	rv       int64
	order    []string // keys in creation order
	items    map[string]object
	watchers map[chan watchEvent]struct{}
}

func newStore(kind string, namespaced bool, limit int) *store {
	return &store{kind: kind, namespaced: namespaced, limit: limit, items: map[string]object{}, watchers: map[chan watchEvent]struct{}{}}
}

func key(namespace, name string) string { return namespace + "/" + name }

func (s *store) serve(w http.ResponseWriter, r *http.Request, namespace, name string) {
	switch {
	case name == "" && r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		s.watch(w, r, namespace)
	case name == "" && r.Method == http.MethodGet:
		s.list(w, r, namespace)
	case name == "" && r.Method == http.MethodPost:
		s.create(w, r, namespace)
	case name != "" && r.Method == http.MethodGet:
		s.get(w, namespace, name)
	case name != "" && (r.Method == http.MethodPut || r.Method == http.MethodPatch):
		s.update(w, r, namespace, name)
	case name != "" && r.Method == http.MethodDelete:
		s.delete(w, r, namespace, name)
	default:
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource")
	}
}

// dryRun: the request (?dryRun=All, as `kubectl apply --dry-run=server` sends) is to be
// checked and answered as if it were made, and to change nothing.
func dryRun(r *http.Request) bool {
	return len(r.URL.Query()["dryRun"]) > 0
}

func (s *store) notFound(w http.ResponseWriter, name string) {
	writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("%ss %q not found", strings.ToLower(s.kind), name))
}

func metadata(obj object) object {
	m, ok := obj["metadata"].(object)
	if !ok {
		m = object{}
		obj["metadata"] = m
	}
	return m
}

func (s *store) create(w http.ResponseWriter, r *http.Request, namespace string) {
	obj, err := decodeBody(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid body: "+err.Error())
		return
	}
	meta := metadata(obj)
	name, _ := meta["name"].(string)
	if name == "" {
		prefix, _ := meta["generateName"].(string)
		if prefix == "" {
			writeStatus(w, http.StatusUnprocessableEntity, "Invalid", "metadata.name or metadata.generateName is required")
			return
		}
		name = prefix + strings.ReplaceAll(string(uuid.NewUUID()), "-", "")[:10]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(namespace, name)
	if _, exists := s.items[k]; exists {
		writeStatus(w, http.StatusConflict, "AlreadyExists", fmt.Sprintf("%ss %q already exists", strings.ToLower(s.kind), name))
		return
	}
	obj["kind"], obj["apiVersion"] = s.kind, "v1"
	meta["name"] = name
	if s.namespaced {
		meta["namespace"] = namespace
	}
	meta["uid"] = string(uuid.NewUUID())
	meta["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	if s.kind == "Namespace" {
		obj["status"] = object{"phase": "Active"}
	}
	if dryRun(r) {
		writeJSON(w, http.StatusCreated, obj)
		return
	}
	s.bump(obj)
	s.items[k] = obj
	s.order = append(s.order, k)
	s.journal.write(journalEntry{Kind: s.kind, Op: "put", Key: k, Obj: obj})
	s.notify("ADDED", obj)
	s.trim()
	writeJSON(w, http.StatusCreated, obj)
}

func (s *store) get(w http.ResponseWriter, namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj, ok := s.items[key(namespace, name)]
	if !ok {
		s.notFound(w, name)
		return
	}
	writeJSON(w, http.StatusOK, obj)
}

// update replaces the object (PUT) or merges a JSON merge patch into it (PATCH;
// strategic merge patches are treated alike, which is exact for these kinds).
func (s *store) update(w http.ResponseWriter, r *http.Request, namespace, name string) {
	body, err := decodeBody(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid body: "+err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(namespace, name)
	old, ok := s.items[k]
	if !ok {
		s.notFound(w, name)
		return
	}
	var obj object
	if r.Method == http.MethodPatch {
		obj = mergePatch(deepCopy(old), body)
	} else {
		obj = body
	}
	meta, oldMeta := metadata(obj), metadata(old)
	for _, f := range []string{"name", "namespace", "uid", "creationTimestamp"} {
		if v, ok := oldMeta[f]; ok {
			meta[f] = v
		}
	}
	obj["kind"], obj["apiVersion"] = s.kind, "v1"
	if dryRun(r) {
		writeJSON(w, http.StatusOK, obj)
		return
	}
	s.bump(obj)
	s.items[k] = obj
	s.journal.write(journalEntry{Kind: s.kind, Op: "put", Key: k, Obj: obj})
	s.notify("MODIFIED", obj)
	writeJSON(w, http.StatusOK, obj)
}

func (s *store) delete(w http.ResponseWriter, r *http.Request, namespace, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(namespace, name)
	obj, ok := s.items[k]
	if !ok {
		s.notFound(w, name)
		return
	}
	if dryRun(r) {
		writeJSON(w, http.StatusOK, obj)
		return
	}
	delete(s.items, k)
	s.bump(obj)
	s.journal.write(journalEntry{Kind: s.kind, Op: "delete", Key: k})
	s.notify("DELETED", obj)
	writeJSON(w, http.StatusOK, obj)
}

// dropNamespace forgets every object in a namespace, as namespace deletion does.
func (s *store) dropNamespace(namespace string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.journal.write(journalEntry{Kind: s.kind, Op: "drop", Key: namespace})
	for k := range s.items {
		if strings.HasPrefix(k, namespace+"/") {
			delete(s.items, k)
		}
	}
}

// replay applies one journalled change (at start-up, before serving).
func (s *store) replay(entry journalEntry) {
	switch entry.Op {
	case "put":
		if _, exists := s.items[entry.Key]; !exists {
			s.order = append(s.order, entry.Key)
		}
		s.items[entry.Key] = entry.Obj
		if rv, err := strconv.ParseInt(fmt.Sprint(metadata(entry.Obj)["resourceVersion"]), 10, 64); err == nil && rv > s.rv {
			s.rv = rv
		}
	case "delete":
		delete(s.items, entry.Key)
	case "drop":
		for k := range s.items {
			if strings.HasPrefix(k, entry.Key+"/") {
				delete(s.items, k)
			}
		}
	}
	s.trim()
}

func (s *store) bump(obj object) {
	s.rv++
	metadata(obj)["resourceVersion"] = strconv.FormatInt(s.rv, 10)
}

// trim drops the oldest objects past the limit and compacts the order index.
func (s *store) trim() {
	if s.limit == 0 || len(s.order) <= 2*s.limit {
		return
	}
	kept := s.order[:0]
	for _, k := range s.order {
		if _, ok := s.items[k]; ok {
			kept = append(kept, k)
		}
	}
	for len(kept) > s.limit {
		delete(s.items, kept[0])
		kept = kept[1:]
	}
	s.order = append([]string(nil), kept...)
}

func (s *store) notify(kind string, obj object) {
	for ch := range s.watchers {
		select {
		case ch <- watchEvent{Type: kind, Object: deepCopy(obj)}:
		default: // a slow watcher misses events rather than blocking writers
		}
	}
}

// selected returns the objects of a namespace ("" = all) matching the
// request's label and field selectors, in creation order.
func (s *store) selected(r *http.Request, namespace string) ([]object, error) {
	ls, err := labels.Parse(r.URL.Query().Get("labelSelector"))
	if err != nil {
		return nil, err
	}
	fs, err := fields.ParseSelector(r.URL.Query().Get("fieldSelector"))
	if err != nil {
		return nil, err
	}
	var out []object
	for _, k := range s.order {
		obj, ok := s.items[k]
		if !ok || (namespace != "" && !strings.HasPrefix(k, namespace+"/")) {
			continue
		}
		if ls.Matches(objectLabels(obj)) && fs.Matches(objectFields{obj}) {
			out = append(out, obj)
		}
	}
	return out, nil
}

func (s *store) list(w http.ResponseWriter, r *http.Request, namespace string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	items, err := s.selected(r, namespace)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	if items == nil {
		items = []object{}
	}
	writeJSON(w, http.StatusOK, object{
		"kind": s.kind + "List", "apiVersion": "v1",
		"metadata": object{"resourceVersion": strconv.FormatInt(s.rv, 10)},
		"items":    items,
	})
}

// watch streams the current objects as ADDED (unless a resourceVersion other
// than "0" is given), then changes, until the client leaves or timeoutSeconds.
func (s *store) watch(w http.ResponseWriter, r *http.Request, namespace string) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeStatus(w, http.StatusInternalServerError, "InternalError", "streaming unsupported")
		return
	}
	ch := make(chan watchEvent, 1024)
	s.mu.Lock()
	initial, err := s.selected(r, namespace)
	if err != nil {
		s.mu.Unlock()
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	if rv := r.URL.Query().Get("resourceVersion"); rv != "" && rv != "0" {
		initial = nil
	}
	for _, obj := range initial {
		ch <- watchEvent{Type: "ADDED", Object: deepCopy(obj)}
	}
	s.watchers[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, ch)
		s.mu.Unlock()
	}()

	timeout := 30 * time.Minute
	if t, err := strconv.Atoi(r.URL.Query().Get("timeoutSeconds")); err == nil && t > 0 {
		timeout = time.Duration(t) * time.Second
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case <-timer.C:
			return
		case ev := <-ch:
			meta := metadata(ev.Object)
			if namespace != "" && meta["namespace"] != namespace {
				continue
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

func objectLabels(obj object) labels.Set {
	set := labels.Set{}
	if ls, ok := metadata(obj)["labels"].(object); ok {
		for k, v := range ls {
			if s, ok := v.(string); ok {
				set[k] = s
			}
		}
	}
	return set
}

// objectFields resolves field-selector paths such as involvedObject.name.
type objectFields struct{ obj object }

func (f objectFields) Has(field string) bool { _, ok := f.lookup(field); return ok }
func (f objectFields) Get(field string) string {
	v, _ := f.lookup(field)
	return v
}

func (f objectFields) lookup(field string) (string, bool) {
	var cur interface{} = f.obj
	for _, part := range strings.Split(field, ".") {
		m, ok := cur.(object)
		if !ok {
			return "", false
		}
		if cur, ok = m[part]; !ok {
			return "", true // absent fields compare as empty, as in Kubernetes
		}
	}
	switch v := cur.(type) {
	case string:
		return v, true
	case nil:
		return "", true
	default:
		b, _ := json.Marshal(v)
		return string(b), true
	}
}

// decodeBody reads a JSON or protobuf (as kubectl sends for core kinds) object.
func decodeBody(r *http.Request) (object, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	if strings.Contains(r.Header.Get("Content-Type"), "protobuf") {
		decoded, _, err := clientscheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
		if err != nil {
			return nil, err
		}
		return runtime.DefaultUnstructuredConverter.ToUnstructured(decoded)
	}
	var obj object
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, err
	}
	return obj, nil
}

func mergePatch(target, patch object) object {
	for k, v := range patch {
		if v == nil {
			delete(target, k)
			continue
		}
		if pm, ok := v.(object); ok {
			tm, ok := target[k].(object)
			if !ok {
				tm = object{}
			}
			target[k] = mergePatch(tm, pm)
			continue
		}
		target[k] = v
	}
	return target
}

func deepCopy(obj object) object {
	b, _ := json.Marshal(obj)
	var out object
	_ = json.Unmarshal(b, &out)
	return out
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, code int, reason, message string) {
	writeJSON(w, code, &metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  message,
		Reason:   metav1.StatusReason(reason),
		Code:     int32(code),
	})
}
