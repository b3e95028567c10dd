// Request bodies for the stand-in APIs in the forms clients send built-in
// kinds in, which custom resources do not accept:
//   - protobuf: kubectl's typed commands (create rolebinding, create
//     clusterrole, ...) send it; the CRD handler cannot decode it. It is decoded
//     here with client-go's scheme and passed on as JSON;
//   - strategic merge patches: kubectl apply and edit send them for built-in
//     kinds. The lists of the stand-in kinds (rules, subjects,
//     clusterRoleSelectors) have no merge keys, so a strategic merge patch of
//     them is a JSON merge patch, and is passed on as one; one with directives
//     ($patch, $setElementOrder/..., ...) is refused with 415.

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// standInGroups are the built-in API groups this server serves with CRDs.
var standInGroups = []string{"rbac.authorization.k8s.io", "coordination.k8s.io"}

// maxBody bounds a request body, as the server's own limit does (3 MiB).
const maxBody = 3 << 20

// builtInBodies wraps the API handler (inside authentication and authorisation).
func builtInBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		contentType := r.Header.Get("Content-Type")
		if r.Body != nil && strings.HasPrefix(contentType, string(types.StrategicMergePatchType)) && isStandIn(r.URL.Path) {
			data, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
			if err != nil {
				writeStatus(w, http.StatusBadRequest, "BadRequest", "reading the body: "+err.Error())
				return
			}
			if bytes.Contains(data, []byte(`"$`)) {
				writeStatus(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType",
					"strategic merge patch directives are not supported by this test server's stand-in for a built-in API; use a JSON merge patch")
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(data))
			r.Header.Set("Content-Type", string(types.MergePatchType))
		}
		if r.Body != nil && strings.HasPrefix(contentType, runtime.ContentTypeProtobuf) && isStandIn(r.URL.Path) {
			obj, gvk, err := decodeTyped(r)
			if err != nil {
				writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid protobuf body: "+err.Error())
				return
			}
			obj.GetObjectKind().SetGroupVersionKind(*gvk)
			body, err := json.Marshal(obj)
			if err != nil {
				writeStatus(w, http.StatusInternalServerError, "InternalError", err.Error())
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.Header.Set("Content-Length", strconv.Itoa(len(body)))
			r.Header.Set("Content-Type", runtime.ContentTypeJSON)
		}
		next.ServeHTTP(w, r)
	})
}

func isStandIn(path string) bool {
	for _, group := range standInGroups {
		if strings.HasPrefix(path, "/apis/"+group+"/") {
			return true
		}
	}
	return false
}
