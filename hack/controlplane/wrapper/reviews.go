// The review APIs a user asks about themself with: `kubectl auth can-i`
// (SelfSubjectAccessReview, and SelfSubjectRulesReview for --list) and
// `kubectl auth whoami` (SelfSubjectReview). They are answered by the same
// authoriser that guards every request. Creating one is itself authorised
// first, as on a cluster (system:basic-user grants it to everyone).

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/request"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
)

// reviewGroups are the API groups of the reviews, for discovery.
var reviewGroups = map[string]*metav1.APIResourceList{
	authorizationv1.GroupName: {
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: authorizationv1.SchemeGroupVersion.String(),
		APIResources: []metav1.APIResource{
			{Name: "selfsubjectaccessreviews", SingularName: "selfsubjectaccessreview", Kind: "SelfSubjectAccessReview", Verbs: metav1.Verbs{"create"}},
			{Name: "selfsubjectrulesreviews", SingularName: "selfsubjectrulesreview", Kind: "SelfSubjectRulesReview", Verbs: metav1.Verbs{"create"}},
		},
	},
	authenticationv1.GroupName: {
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: authenticationv1.SchemeGroupVersion.String(),
		APIResources: []metav1.APIResource{
			{Name: "selfsubjectreviews", SingularName: "selfsubjectreview", Kind: "SelfSubjectReview", Verbs: metav1.Verbs{"create"}},
		},
	},
}

// serveReviewGroup answers /apis/GROUP, /apis/GROUP/v1 and POST
// /apis/GROUP/v1/RESOURCE for the review groups; false if the path is not theirs.
func (h *coreHandler) serveReviewGroup(w http.ResponseWriter, r *http.Request, parts []string) bool {
	if len(parts) < 2 || parts[0] != "apis" || reviewGroups[parts[1]] == nil {
		return false
	}
	resources := reviewGroups[parts[1]]
	switch {
	case len(parts) == 2:
		version := metav1.GroupVersionForDiscovery{GroupVersion: resources.GroupVersion, Version: "v1"}
		writeJSON(w, http.StatusOK, &metav1.APIGroup{
			TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
			Name:     parts[1], Versions: []metav1.GroupVersionForDiscovery{version}, PreferredVersion: version,
		})
	case len(parts) == 3 && parts[2] == "v1":
		writeJSON(w, http.StatusOK, resources)
	case len(parts) == 4 && parts[2] == "v1" && r.Method == http.MethodPost:
		h.serveReview(w, r, parts[3])
	case len(parts) == 4 && parts[2] == "v1":
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "only create is supported")
	default:
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
	}
	return true
}

func (h *coreHandler) serveReview(w http.ResponseWriter, r *http.Request, resource string) {
	u, ok := request.UserFrom(r.Context())
	if !ok {
		writeStatus(w, http.StatusInternalServerError, "InternalError", "no user in the request")
		return
	}
	obj, gvk, err := decodeTyped(r)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "invalid body: "+err.Error())
		return
	}
	var answered runtime.Object
	switch review := obj.(type) {
	case *authorizationv1.SelfSubjectAccessReview:
		if resource == "selfsubjectaccessreviews" {
			answered, err = h.answerAccessReview(r.Context(), u, review)
		}
	case *authorizationv1.SelfSubjectRulesReview:
		if resource == "selfsubjectrulesreviews" {
			answered = h.answerRulesReview(r.Context(), u, review)
		}
	case *authenticationv1.SelfSubjectReview:
		if resource == "selfsubjectreviews" {
			answered = answerSelfReview(u, review)
		}
	}
	switch {
	case err != nil:
		writeStatus(w, http.StatusUnprocessableEntity, "Invalid", err.Error())
	case answered == nil:
		writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("the body is not a review of kind %s", resource))
	default:
		answered.GetObjectKind().SetGroupVersionKind(*gvk)
		writeJSON(w, http.StatusCreated, answered)
	}
}

// answerAccessReview: may u do what the review asks (kubectl auth can-i)?
func (h *coreHandler) answerAccessReview(ctx context.Context, u user.Info, review *authorizationv1.SelfSubjectAccessReview) (runtime.Object, error) {
	attrs, err := reviewAttributes(u, review.Spec)
	if err != nil {
		return nil, err
	}
	decision, reason, evalErr := h.authorizer.Authorize(ctx, attrs)
	review.Status = authorizationv1.SubjectAccessReviewStatus{
		Allowed: decision == authorizer.DecisionAllow,
		Denied:  decision == authorizer.DecisionDeny,
		Reason:  reason,
	}
	if evalErr != nil {
		review.Status.EvaluationError = evalErr.Error()
	}
	return review, nil
}

// answerRulesReview: what may u do in a namespace (kubectl auth can-i --list)?
func (h *coreHandler) answerRulesReview(ctx context.Context, u user.Info, review *authorizationv1.SelfSubjectRulesReview) runtime.Object {
	resourceRules, nonResourceRules, incomplete, err := h.rules.RulesFor(ctx, u, review.Spec.Namespace)
	review.Status = authorizationv1.SubjectRulesReviewStatus{Incomplete: incomplete}
	for _, rule := range resourceRules {
		review.Status.ResourceRules = append(review.Status.ResourceRules, authorizationv1.ResourceRule{
			Verbs: rule.GetVerbs(), APIGroups: rule.GetAPIGroups(), Resources: rule.GetResources(), ResourceNames: rule.GetResourceNames(),
		})
	}
	for _, rule := range nonResourceRules {
		review.Status.NonResourceRules = append(review.Status.NonResourceRules, authorizationv1.NonResourceRule{
			Verbs: rule.GetVerbs(), NonResourceURLs: rule.GetNonResourceURLs(),
		})
	}
	if err != nil {
		review.Status.EvaluationError = err.Error()
	}
	return review
}

// answerSelfReview: who is u (kubectl auth whoami)?
func answerSelfReview(u user.Info, review *authenticationv1.SelfSubjectReview) runtime.Object {
	review.Status.UserInfo = authenticationv1.UserInfo{Username: u.GetName(), UID: u.GetUID(), Groups: u.GetGroups()}
	if extra := u.GetExtra(); len(extra) > 0 {
		review.Status.UserInfo.Extra = map[string]authenticationv1.ExtraValue{}
		for k, v := range extra {
			review.Status.UserInfo.Extra[k] = v
		}
	}
	return review
}

// reviewAttributes are the attributes a SelfSubjectAccessReview asks about, for u.
func reviewAttributes(u user.Info, spec authorizationv1.SelfSubjectAccessReviewSpec) (authorizer.AttributesRecord, error) {
	switch {
	case spec.ResourceAttributes != nil && spec.NonResourceAttributes == nil:
		ra := spec.ResourceAttributes
		return authorizer.AttributesRecord{
			User: u, Verb: ra.Verb, Namespace: ra.Namespace, APIGroup: ra.Group, APIVersion: ra.Version,
			Resource: ra.Resource, Subresource: ra.Subresource, Name: ra.Name, ResourceRequest: true,
		}, nil
	case spec.NonResourceAttributes != nil && spec.ResourceAttributes == nil:
		nra := spec.NonResourceAttributes
		return authorizer.AttributesRecord{User: u, Verb: nra.Verb, Path: nra.Path}, nil
	}
	return authorizer.AttributesRecord{}, fmt.Errorf("exactly one of spec.resourceAttributes, spec.nonResourceAttributes is required")
}

// decodeTyped reads a JSON or protobuf body of a type client-go knows.
func decodeTyped(r *http.Request) (runtime.Object, *schema.GroupVersionKind, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, nil, err
	}
	return clientscheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
}
