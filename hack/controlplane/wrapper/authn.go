// Authentication: client certificates (signed by --client-ca-file) and bearer
// tokens (--token-auth-file), with upstream's authenticators, and no anonymous
// access: a request with neither is refused with 401, as kube-apiserver does
// with --anonymous-auth=false.

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/apiserver/pkg/authentication/request/x509"
	"k8s.io/apiserver/pkg/authentication/token/tokenfile"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/klog/v2"
)

// newAuthenticator is the union of the x509 client certificate authenticator
// (CN = user, O = groups) and, with a token file, the bearer token one; every
// user it accepts is also in system:authenticated.
func newAuthenticator(serving *genericapiserver.SecureServingInfo, tokenPath string) (authenticator.Request, error) {
	if serving == nil || serving.ClientCA == nil {
		return nil, errors.New("--client-ca-file is required: the admin authenticates with a client certificate")
	}
	authenticators := []authenticator.Request{
		x509.NewDynamic(serving.ClientCA.VerifyOptions, x509.CommonNameUserConversion),
	}
	if tokenPath != "" {
		tokens, err := newTokenFile(tokenPath)
		if err != nil {
			return nil, err
		}
		authenticators = append(authenticators, bearertoken.New(tokens))
	}
	return group.NewAuthenticatedGroupAdder(union.New(authenticators...)), nil
}

// tokenFile is upstream's static token authenticator (tokenfile.NewCSV, behind
// kube-apiserver's --token-auth-file) over a file that may change while the
// server runs, so tests can add users without a restart. Each authentication
// looks at the file's stamp (inode, size, modification time); a changed file
// is read again. A file that does not parse is refused, once, with an error in
// the log, and the tokens read before stay in force.
type tokenFile struct {
	path string

	mu      sync.Mutex // serialises reloads
	stamp   atomic.Pointer[fileStamp]
	current atomic.Pointer[tokenfile.TokenAuthenticator]
}

// fileStamp tells versions of a file apart: a file replaced by rename has a new
// inode, so two versions written within one clock tick are told apart too.
type fileStamp struct {
	inode   uint64
	size    int64
	modTime time.Time
}

func stampOf(path string) (fileStamp, error) {
	info, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	stamp := fileStamp{size: info.Size(), modTime: info.ModTime()}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		stamp.inode = sys.Ino
	}
	return stamp, nil
}

// newTokenFile reads the file; at start-up a missing or malformed file is an error.
func newTokenFile(path string) (*tokenFile, error) {
	stamp, err := stampOf(path)
	if err != nil {
		return nil, fmt.Errorf("--token-auth-file: %w", err)
	}
	tokens, err := tokenfile.NewCSV(path)
	if err != nil {
		return nil, fmt.Errorf("--token-auth-file %s is malformed: %w", path, err)
	}
	t := &tokenFile{path: path}
	t.stamp.Store(&stamp)
	t.current.Store(tokens)
	return t, nil
}

// reloadIfChanged reads the file again if its stamp changed since the last read.
func (t *tokenFile) reloadIfChanged() {
	stamp, err := stampOf(t.path)
	if err != nil || stamp == *t.stamp.Load() {
		return // a file briefly missing keeps the tokens in force
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if stamp == *t.stamp.Load() {
		return // another request reloaded it meanwhile
	}
	t.stamp.Store(&stamp)
	tokens, err := tokenfile.NewCSV(t.path)
	if err != nil {
		klog.Errorf("token file %s refused, the tokens read before stay in force: %v", t.path, err)
		return
	}
	t.current.Store(tokens)
	klog.Infof("token file %s read again", t.path)
}

func (t *tokenFile) AuthenticateToken(ctx context.Context, token string) (*authenticator.Response, bool, error) {
	t.reloadIfChanged()
	return t.current.Load().AuthenticateToken(ctx, token)
}
