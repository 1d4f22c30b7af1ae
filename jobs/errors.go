package jobs

import (
	"errors"
	"strconv"
)

// JobErrorKind is Treadmill's JobErrorKind. The numbers are boardvisor.v1.JobErrorKind's.
type JobErrorKind int

// Treadmill's ten job error kinds.
const (
	KindAlreadyRunning     JobErrorKind = 1  // the board already runs this or another job
	KindAlreadyStopping    JobErrorKind = 2  // the job is already being stopped
	KindJobAlreadyExists   JobErrorKind = 3  // a job with this ID exists
	KindCannotResume       JobErrorKind = 4  // the job could not be restored after a restart
	KindJobNotFound        JobErrorKind = 5  // no such job
	KindMaxConcurrentJobs  JobErrorKind = 6  // the board (or its queue) is full
	KindImageNotFound      JobErrorKind = 7  // the requested image does not exist
	KindImageInvalid       JobErrorKind = 8  // the requested image is malformed
	KindImageNotCompatible JobErrorKind = 9  // the image does not fit the board
	KindInternalError      JobErrorKind = 10 // anything else
)

var kindNames = [...]string{
	KindAlreadyRunning:     "AlreadyRunning",
	KindAlreadyStopping:    "AlreadyStopping",
	KindJobAlreadyExists:   "JobAlreadyExists",
	KindCannotResume:       "CannotResume",
	KindJobNotFound:        "JobNotFound",
	KindMaxConcurrentJobs:  "MaxConcurrentJobs",
	KindImageNotFound:      "ImageNotFound",
	KindImageInvalid:       "ImageInvalid",
	KindImageNotCompatible: "ImageNotCompatible",
	KindInternalError:      "InternalError",
}

// JobErrorKinds lists all ten kinds.
var JobErrorKinds = []JobErrorKind{KindAlreadyRunning, KindAlreadyStopping, KindJobAlreadyExists,
	KindCannotResume, KindJobNotFound, KindMaxConcurrentJobs, KindImageNotFound, KindImageInvalid,
	KindImageNotCompatible, KindInternalError}

// String returns Treadmill's name of the kind, e.g. "MaxConcurrentJobs".
func (k JobErrorKind) String() string {
	if k >= KindAlreadyRunning && k <= KindInternalError {
		return kindNames[k]
	}
	return "JobErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// JobError is an error about a job, as Treadmill reports it: a kind and a description.
type JobError struct {
	Kind        JobErrorKind
	Description string
}

// NewJobError returns a *JobError of the given kind.
func NewJobError(kind JobErrorKind, description string) *JobError {
	return &JobError{Kind: kind, Description: description}
}

// Error returns "<Kind>: <description>".
func (e *JobError) Error() string {
	if e.Description == "" {
		return e.Kind.String()
	}
	return e.Kind.String() + ": " + e.Description
}

// Is reports whether target is a *JobError of the same kind, so that
// errors.Is(err, &JobError{Kind: KindJobNotFound}) works.
func (e *JobError) Is(target error) bool {
	t, ok := target.(*JobError)
	return ok && t.Kind == e.Kind
}

// KindOf returns the kind of the first *JobError in err's chain, and false if there is none.
func KindOf(err error) (JobErrorKind, bool) {
	var je *JobError
	if errors.As(err, &je) {
		return je.Kind, true
	}
	return 0, false
}
